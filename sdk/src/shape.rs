//! The shapes of the types a module consumes and produces ([`crate::abi::Shape`]), traced from their
//! serde `Deserialize` implementation with `serde-reflection`, so the host can refuse an edge
//! whose two ends would read each other's bincode differently (fields reordered, missing, or of
//! another type) before any record travels.
//!
//! A type that cannot be traced (serde's self-describing features: untagged enums, `flatten`,
//! `serde_json::Value`) or that is `Serialize` only gets no shape, and the host compares its name.

use crate::abi::{Shape, ShapeKind, ShapeNode};
use serde::Deserialize;
use serde_reflection::{
    ContainerFormat, Format, Named, Registry, Samples, Tracer, TracerConfig, VariantFormat,
};
use std::collections::{BTreeMap, BTreeSet};

/// The shape of `T`, or `None` where it cannot be traced. A type that borrows from its input
/// (`Order<'a>` with `Cow<'a, str>` fields) is traced as `Order<'static>`.
///
/// ```
/// use flumen_sdk::abi::ShapeKind;
///
/// #[derive(serde::Deserialize)]
/// struct Order { order_id: String, qty: i64 }
///
/// let shape = flumen_sdk::shape::of::<Order>().unwrap();
/// assert_eq!(shape.nodes[0].kind, ShapeKind::Struct);
/// let fields: Vec<&str> = shape.nodes[0].children.iter().map(|(n, _)| n.as_str()).collect();
/// assert_eq!(fields, ["order_id", "qty"]);
/// ```
pub fn of<T: Deserialize<'static>>() -> Option<Shape> {
    let (root, registry) = trace::<T>()?;
    let mut builder = Builder {
        registry: &registry,
        nodes: Vec::new(),
        containers: BTreeMap::new(),
    };
    builder.format(&root);
    Some(Shape {
        nodes: builder.nodes,
        json: false,
    })
}

/// Traces `T` until every variant of every enum inside it is known. The tracer explores one
/// more variant of an enum each time its "incomplete" mark is cleared, by name; the names come
/// from a first trace that reports which enums are still incomplete.
fn trace<T: Deserialize<'static>>() -> Option<(Format, Registry)> {
    // No sample values: the tracer makes up its own. Static, so that a type borrowing from its
    // input can be traced at `'static`.
    static SAMPLES: std::sync::LazyLock<Samples> = std::sync::LazyLock::new(Samples::new);
    let samples: &'static Samples = &SAMPLES;
    let mut enums: BTreeSet<String> = BTreeSet::new();
    for _ in 0..8 {
        let mut tracer = Tracer::new(TracerConfig::default());
        let mut root = None;
        for _ in 0..256 {
            let (format, _) = tracer.trace_type_once::<T>(samples).ok()?;
            root = Some(format);
            let mut explored = false;
            for name in &enums {
                explored |= tracer.check_incomplete_enum(name).is_some();
            }
            if !explored {
                break;
            }
        }
        match tracer.registry() {
            Ok(registry) => return Some((root?, registry)),
            Err(serde_reflection::Error::MissingVariants(missing)) => {
                let known = enums.len();
                enums.extend(missing);
                if enums.len() == known {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
    None
}

/// Picks, at compile time, whether a type can be traced: `Probe::<T>::new().shape()` calls
/// [`of`] for a `Deserialize` type and returns `None` for any other (the macros use it on
/// output types, which only need `Serialize`).
#[doc(hidden)]
pub struct Probe<T>(std::marker::PhantomData<T>);

impl<T> Probe<T> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Probe(std::marker::PhantomData)
    }
}

#[doc(hidden)]
pub trait Traced {
    fn shape(&self) -> Option<Shape>;
}

impl<T: Deserialize<'static>> Traced for Probe<T> {
    fn shape(&self) -> Option<Shape> {
        of::<T>()
    }
}

/// Marks a traced shape [`Shape::json`] where the type's JSON is what its shape renders
/// ([`crate::render::vouch`]): `(&probe).vouched(shape)` checks a type that is `Serialize` and
/// `Deserialize`, and leaves any other type's shape unmarked.
#[doc(hidden)]
pub trait Vouched {
    fn vouched(&self, shape: Option<Shape>) -> Option<Shape>;
}

impl<T: serde::Serialize + Deserialize<'static>> Vouched for Probe<T> {
    fn vouched(&self, shape: Option<Shape>) -> Option<Shape> {
        shape.map(|mut shape| {
            shape.json = crate::render::vouch::<T>(&shape);
            shape
        })
    }
}

#[doc(hidden)]
pub trait Unvouched {
    fn vouched(&self, shape: Option<Shape>) -> Option<Shape>;
}

impl<T> Unvouched for &Probe<T> {
    fn vouched(&self, shape: Option<Shape>) -> Option<Shape> {
        shape
    }
}

#[doc(hidden)]
pub trait Untraced {
    fn shape(&self) -> Option<Shape>;
}

impl<T> Untraced for &Probe<T> {
    fn shape(&self) -> Option<Shape> {
        None
    }
}

struct Builder<'a> {
    registry: &'a Registry,
    nodes: Vec<ShapeNode>,
    /// The node of each named container already built (recursive types become cycles).
    containers: BTreeMap<&'a str, u32>,
}

impl<'a> Builder<'a> {
    fn push(&mut self, kind: ShapeKind, name: &str) -> u32 {
        self.nodes.push(ShapeNode {
            kind,
            name: name.to_string(),
            children: Vec::new(),
        });
        (self.nodes.len() - 1) as u32
    }

    fn set_children(&mut self, node: u32, children: Vec<(String, u32)>) -> u32 {
        self.nodes[node as usize].children = children;
        node
    }

    fn format(&mut self, format: &'a Format) -> u32 {
        let simple = |kind| Some(kind);
        let kind = match format {
            Format::Unit => simple(ShapeKind::Unit),
            Format::Bool => simple(ShapeKind::Bool),
            Format::I8 => simple(ShapeKind::I8),
            Format::I16 => simple(ShapeKind::I16),
            Format::I32 => simple(ShapeKind::I32),
            Format::I64 => simple(ShapeKind::I64),
            Format::I128 => simple(ShapeKind::I128),
            Format::U8 => simple(ShapeKind::U8),
            Format::U16 => simple(ShapeKind::U16),
            Format::U32 => simple(ShapeKind::U32),
            Format::U64 => simple(ShapeKind::U64),
            Format::U128 => simple(ShapeKind::U128),
            Format::F32 => simple(ShapeKind::F32),
            Format::F64 => simple(ShapeKind::F64),
            Format::Char => simple(ShapeKind::Char),
            Format::Str => simple(ShapeKind::Str),
            Format::Bytes => simple(ShapeKind::Bytes),
            _ => None,
        };
        if let Some(kind) = kind {
            return self.push(kind, "");
        }
        match format {
            Format::Option(inner) => self.wrap(ShapeKind::Option, [inner.as_ref()]),
            Format::Seq(inner) => self.wrap(ShapeKind::Seq, [inner.as_ref()]),
            Format::Map { key, value } => self.wrap(ShapeKind::Map, [key.as_ref(), value.as_ref()]),
            Format::Tuple(items) => self.wrap(ShapeKind::Tuple, items),
            Format::TupleArray { content, size } => {
                self.wrap(ShapeKind::Array(*size as u64), [content.as_ref()])
            }
            Format::TypeName(name) => self.container(name),
            // Not left by a finished trace; opaque rather than wrong.
            _ => self.push(ShapeKind::Opaque, "?"),
        }
    }

    fn wrap(&mut self, kind: ShapeKind, items: impl IntoIterator<Item = &'a Format>) -> u32 {
        let node = self.push(kind, "");
        let children = items
            .into_iter()
            .map(|item| (String::new(), self.format(item)))
            .collect();
        self.set_children(node, children)
    }

    fn named(&mut self, fields: &'a [Named<Format>]) -> Vec<(String, u32)> {
        fields
            .iter()
            .map(|field| (field.name.clone(), self.format(&field.value)))
            .collect()
    }

    fn container(&mut self, name: &'a str) -> u32 {
        if let Some(&node) = self.containers.get(name) {
            return node;
        }
        let Some(container) = self.registry.get(name) else {
            return self.push(ShapeKind::Opaque, name);
        };
        let kind = match container {
            ContainerFormat::UnitStruct => ShapeKind::UnitStruct,
            ContainerFormat::NewTypeStruct(_) => ShapeKind::NewType,
            ContainerFormat::TupleStruct(_) => ShapeKind::TupleStruct,
            ContainerFormat::Struct(_) => ShapeKind::Struct,
            ContainerFormat::Enum(_) => ShapeKind::Enum,
        };
        let node = self.push(kind, name);
        self.containers.insert(name, node);
        let children = match container {
            ContainerFormat::UnitStruct => Vec::new(),
            ContainerFormat::NewTypeStruct(inner) => vec![(String::new(), self.format(inner))],
            ContainerFormat::TupleStruct(items) => items
                .iter()
                .map(|item| (String::new(), self.format(item)))
                .collect(),
            ContainerFormat::Struct(fields) => self.named(fields),
            ContainerFormat::Enum(variants) => variants
                .values()
                .map(|variant| (variant.name.clone(), self.variant(variant)))
                .collect(),
        };
        self.set_children(node, children)
    }

    fn variant(&mut self, variant: &'a Named<VariantFormat>) -> u32 {
        let name = &variant.name;
        match &variant.value {
            VariantFormat::NewType(inner) => {
                let node = self.push(ShapeKind::NewTypeVariant, name);
                let child = self.format(inner);
                self.set_children(node, vec![(String::new(), child)])
            }
            VariantFormat::Tuple(items) => {
                let node = self.push(ShapeKind::TupleVariant, name);
                let children = items
                    .iter()
                    .map(|item| (String::new(), self.format(item)))
                    .collect();
                self.set_children(node, children)
            }
            VariantFormat::Struct(fields) => {
                let node = self.push(ShapeKind::StructVariant, name);
                let children = self.named(fields);
                self.set_children(node, children)
            }
            // `Unit`, or a variant the trace never reached.
            _ => self.push(ShapeKind::UnitVariant, name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Order {
        order_id: String,
        user_id: i64,
        items: Vec<Item>,
        status: Status,
        note: Option<String>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Item {
        sku: String,
        qty: u32,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Status {
        New,
        Paid { at: i64 },
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Tree {
        children: Vec<Tree>,
    }

    fn kinds(shape: &Shape) -> Vec<ShapeKind> {
        shape.nodes.iter().map(|n| n.kind).collect()
    }

    #[test]
    fn nested_structs_enums_and_options_are_traced_in_field_order() {
        let shape = of::<Order>().unwrap();
        let root = &shape.nodes[0];
        assert_eq!(root.name, "Order");
        let fields: Vec<&str> = root.children.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(fields, ["order_id", "user_id", "items", "status", "note"]);
        let kind_of = |field: usize| shape.nodes[root.children[field].1 as usize].kind;
        assert_eq!(kind_of(0), ShapeKind::Str);
        assert_eq!(kind_of(1), ShapeKind::I64);
        assert_eq!(kind_of(2), ShapeKind::Seq);
        assert_eq!(kind_of(3), ShapeKind::Enum);
        assert_eq!(kind_of(4), ShapeKind::Option);
        let status = &shape.nodes[root.children[3].1 as usize];
        let variants: Vec<&str> = status.children.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(variants, ["New", "Paid"]);
    }

    #[test]
    fn recursive_types_become_cycles_and_untraceable_types_have_no_shape() {
        let shape = of::<Tree>().unwrap();
        assert_eq!(kinds(&shape), [ShapeKind::Struct, ShapeKind::Seq]);
        assert_eq!(shape.nodes[1].children[0].1, 0);
        assert!(of::<serde_json::Value>().is_none());
        assert_eq!(kinds(&of::<(i64, String)>().unwrap())[0], ShapeKind::Tuple);
    }

    #[test]
    // The borrow is what picks the fallback for a type that cannot be traced.
    #[allow(clippy::needless_borrow)]
    fn the_probe_traces_only_what_can_be_deserialized() {
        #[derive(serde::Serialize)]
        struct OutOnly {
            x: i64,
        }
        assert!((&Probe::<Item>::new()).shape().is_some());
        assert!((&Probe::<OutOnly>::new()).shape().is_none());
    }
}
