//! [`OperatorInstance`]: an initialised instance of a module running one partition of a stage,
//! rebuilt from its module after a failed call.

use super::failure::GuestFailure;
use super::sandbox::{Limits, LoadedModule, ModuleError, Purpose};
use super::wasm::Runner;
use super::{Call, Export, Guest};
use flumen_sdk::abi::{self, InitRequest, PortSpec};
use std::sync::Arc;

/// How an operator instance is set up.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// The stage's name, for messages.
    pub stage: String,
    /// Which partition of the stage the instance runs, for its log lines.
    pub partition: usize,
    /// The stage's `params`, as JSON.
    pub params: serde_json::Value,
    /// How each port's records are written: main first, then the side outputs.
    pub ports: Vec<PortSpec>,
    /// Memory and time allowed.
    pub limits: Limits,
}

/// An initialised operator instance. After a failed call it rebuilds itself from its module, so
/// the next call finds a fresh instance.
pub struct OperatorInstance {
    module: Arc<LoadedModule>,
    config: InstanceConfig,
    guest: Runner,
    broken: bool,
    health: crate::telemetry::GuestHealth,
}

impl OperatorInstance {
    /// Instantiates `module` and initialises it with `config`.
    pub fn new(module: Arc<LoadedModule>, config: InstanceConfig) -> Result<Self, ModuleError> {
        let guest = Self::start(&module, &config)?;
        Ok(OperatorInstance {
            module,
            config,
            guest,
            broken: false,
            health: crate::telemetry::GuestHealth::default(),
        })
    }

    fn start(module: &LoadedModule, config: &InstanceConfig) -> Result<Runner, ModuleError> {
        let purpose = Purpose::Operator {
            stage: config.stage.as_str().into(),
            partition: config.partition,
        };
        let mut guest = Runner::instantiate(module, config.limits, purpose)?;
        let request = InitRequest {
            stage: config.stage.clone(),
            params_json: config.params.to_string(),
            ports: config.ports.clone(),
        };
        let request = bincode::serde::encode_to_vec(&request, abi::BINCODE)
            .map_err(|e| module.guest_error(format!("cannot encode init: {e}")))?;
        let init_error = |message| ModuleError::Init {
            path: module.path.clone(),
            message,
        };
        let reply = guest
            .call(Export::Init, &[&request])
            .map_err(|GuestFailure(message)| init_error(message))?;
        let outcome = abi::decode_control::<Result<(), String>>(reply)
            .map_err(|e| init_error(format!("init returned garbage: {e}")))?;
        outcome.map_err(init_error)?;
        Ok(guest)
    }

    /// The module this instance runs.
    pub fn module(&self) -> &Arc<LoadedModule> {
        &self.module
    }

    fn ensure_fresh(&mut self) -> Result<(), GuestFailure> {
        if self.broken {
            self.guest = Self::start(&self.module, &self.config)
                .map_err(|e| GuestFailure(format!("cannot restart the instance: {e}")))?;
            self.broken = false;
            self.health.rebuilds += 1;
        }
        Ok(())
    }

    fn call_export(&mut self, export: Export, request: &[&[u8]]) -> Result<&[u8], GuestFailure> {
        self.ensure_fresh()?;
        match self.guest.call(export, request) {
            Ok(reply) => Ok(reply),
            Err(failure) => {
                // A failed call leaves the instance in an unknown state: rebuild it next time.
                self.broken = true;
                self.health.failures += 1;
                self.health.timeouts += u64::from(failure.is_timeout());
                Err(failure)
            }
        }
    }
}

impl Guest for OperatorInstance {
    fn module_hash(&self) -> &str {
        &self.module.hash
    }

    fn health(&self) -> crate::telemetry::GuestHealth {
        self.health
    }

    fn call(&mut self, call: Call, request: &[&[u8]]) -> Result<&[u8], GuestFailure> {
        let export = match call {
            Call::Process => Export::Process,
            Call::Merge => Export::Merge,
            Call::Finish => Export::Finish,
            Call::ToJson => Export::ToJson,
        };
        self.call_export(export, request)
    }
}
