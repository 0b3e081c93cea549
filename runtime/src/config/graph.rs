//! The pipeline's graph, from its configuration (see [`crate::telemetry::Graph`]).

use super::PipelineConfig;
use crate::connectors::{SinkKind, SourceKind};
use crate::telemetry::{
    Graph,
    status::{GraphEdge, GraphNode},
};
use std::fmt::Write;

impl PipelineConfig {
    /// The pipeline's graph: every source, operator and sink, and an edge per input (no
    /// module is loaded).
    pub fn graph(&self) -> Graph {
        let config = self;
        let mut nodes = Vec::new();
        for source in &config.sources {
            let detail = match &source.kind {
                SourceKind::File { path, follow } => {
                    let follow = if *follow { ", followed" } else { "" };
                    format!("file {}{follow}", path.display())
                }
                SourceKind::Generator { count, .. } => format!("generator, {count} orders"),
                SourceKind::Bench { count, .. } => format!("bench, {count} orders"),
                SourceKind::Nexmark { count, .. } => format!("nexmark, {count} events"),
                SourceKind::Kafka(input) => format!("kafka {}", input.topics.join(",")),
            };
            nodes.push(node(&source.name, "source", detail));
        }
        for op in &config.operators {
            let module = op.module.file_name().map_or_else(
                || op.module.display().to_string(),
                |n| n.to_string_lossy().into(),
            );
            let mut detail = module;
            if let Some(key) = &op.key_by {
                let _ = write!(detail, ", by {key}");
            }
            if let Some(window) = &op.window {
                let _ = write!(detail, ", {}", window.describe());
            }
            nodes.push(node(&op.name, "operator", detail));
        }
        for sink in &config.sinks {
            let detail = match &sink.kind {
                SinkKind::File { path } => format!("file {}", path.display()),
                SinkKind::Stdout => "stdout".into(),
                SinkKind::Blackhole => "blackhole".into(),
                SinkKind::Kafka(output) => format!("kafka {}", output.topic),
            };
            nodes.push(node(&sink.name, "sink", detail));
        }
        let inputs = config
            .operators
            .iter()
            .map(|o| (&o.name, &o.inputs))
            .chain(config.sinks.iter().map(|s| (&s.name, &s.inputs)));
        let mut edges = Vec::new();
        for (to, refs) in inputs {
            for input in refs {
                edges.push(GraphEdge {
                    from: input.stage.clone(),
                    port: input.port.clone().unwrap_or_else(|| "main".into()),
                    to: to.clone(),
                });
            }
        }
        Graph {
            nodes,
            edges,
            dead_letter: config.dead_letter.clone(),
        }
    }
}

fn node(name: &str, kind: &'static str, detail: String) -> GraphNode {
    GraphNode {
        name: name.to_string(),
        kind,
        detail,
    }
}
