//! Structural comparison of the types on an edge ([`Shape`]s from each module's `describe`):
//! bincode is positional, so what must agree is the shape — fields in the same order with the
//! same names and types, nested — not the type's name. Two types of the same shape under other
//! names are accepted; a reorder, a missing field or another type is refused with the place it
//! differs. Pure: shapes come from untrusted modules, so indices are checked and the walk is
//! bounded in depth and in steps.

use flumen_sdk::abi::{Shape, ShapeKind, ShapeNode};
use std::collections::HashSet;

/// The most nodes a shape may have.
pub const MAX_NODES: usize = 4096;
/// The deepest a comparison looks.
const MAX_DEPTH: usize = 64;

/// Where two shapes differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Where, from the root: `.items[].qty`, or empty at the root.
    pub path: String,
    /// What the upstream shape has there.
    pub upstream: String,
    /// What the downstream shape has there.
    pub downstream: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.path.is_empty() {
            "the value itself".to_string()
        } else {
            format!("`{}`", self.path)
        };
        write!(
            f,
            "at {at} it is written as `{}` but read as `{}`",
            self.upstream, self.downstream
        )
    }
}

/// Checks a shape from a module: child indices in range, not too many nodes.
pub fn check(shape: &Shape) -> Result<(), String> {
    if shape.nodes.is_empty() || shape.nodes.len() > MAX_NODES {
        return Err(format!(
            "a type shape has {} nodes; 1 to {MAX_NODES} are allowed",
            shape.nodes.len()
        ));
    }
    let children: usize = shape.nodes.iter().map(|n| n.children.len()).sum();
    if children > MAX_NODES * 4 {
        return Err(format!("a type shape has {children} edges, too many"));
    }
    for node in &shape.nodes {
        if node.name.len() > flumen_sdk::abi::MAX_NAME_BYTES
            || node
                .children
                .iter()
                .any(|(name, at)| *at as usize >= shape.nodes.len() || name.len() > 1024)
        {
            return Err("a type shape is malformed".into());
        }
    }
    Ok(())
}

/// Whether a value written with shape `upstream` reads back as `downstream`.
pub fn compare(upstream: &Shape, downstream: &Shape) -> Result<(), Mismatch> {
    let mut seen = HashSet::new();
    walk(upstream, downstream, 0, 0, String::new(), 0, &mut seen)
}

fn node(shape: &Shape, at: u32) -> Option<&ShapeNode> {
    shape.nodes.get(at as usize)
}

fn walk(
    up: &Shape,
    down: &Shape,
    a: u32,
    b: u32,
    path: String,
    depth: usize,
    seen: &mut HashSet<(u32, u32)>,
) -> Result<(), Mismatch> {
    // A pair already being compared (recursive types) holds unless shown otherwise elsewhere.
    if !seen.insert((a, b)) {
        return Ok(());
    }
    let mismatch = |path: &str| Mismatch {
        path: path.to_string(),
        upstream: render(up, a, 2),
        downstream: render(down, b, 2),
    };
    let (Some(x), Some(y)) = (node(up, a), node(down, b)) else {
        return Err(mismatch(&path));
    };
    if depth > MAX_DEPTH {
        return Err(Mismatch {
            upstream: "a type nested too deeply to compare".into(),
            ..mismatch(&path)
        });
    }
    let named = matches!(
        x.kind,
        ShapeKind::Struct | ShapeKind::StructVariant | ShapeKind::Enum
    );
    if x.kind != y.kind || (!named && x.children.len() != y.children.len()) {
        return Err(mismatch(&path));
    }
    match x.kind {
        ShapeKind::Opaque if x.name != y.name => return Err(mismatch(&path)),
        ShapeKind::UnitVariant
        | ShapeKind::NewTypeVariant
        | ShapeKind::TupleVariant
        | ShapeKind::StructVariant
            if x.name != y.name =>
        {
            return Err(mismatch(&path));
        }
        _ => {}
    }
    for (i, ((name_x, cx), (name_y, cy))) in x.children.iter().zip(&y.children).enumerate() {
        let step = match x.kind {
            ShapeKind::Struct | ShapeKind::StructVariant => format!("{path}.{name_x}"),
            ShapeKind::Enum => format!("{path}::{name_x}"),
            ShapeKind::Seq | ShapeKind::Array(_) => format!("{path}[]"),
            ShapeKind::Option => format!("{path}?"),
            ShapeKind::Map if i == 0 => format!("{path}{{key}}"),
            ShapeKind::Map => format!("{path}{{value}}"),
            _ => format!("{path}.{i}"),
        };
        if named && name_x != name_y {
            return Err(Mismatch {
                path: step,
                upstream: format!("{} `{name_x}`", member(x.kind, i)),
                downstream: format!("{} `{name_y}`", member(x.kind, i)),
            });
        }
        walk(up, down, *cx, *cy, step, depth + 1, seen)?;
    }
    // Same names as far as both go: one has more fields (or variants) than the other.
    let common = x.children.len().min(y.children.len());
    if x.children.len() != y.children.len() {
        let describe = |children: &[(String, u32)]| match children.get(common) {
            Some((name, _)) => format!("{} `{name}`", member(x.kind, common)),
            None => format!("no {}", member(x.kind, common)),
        };
        return Err(Mismatch {
            path,
            upstream: describe(&x.children),
            downstream: describe(&y.children),
        });
    }
    Ok(())
}

fn member(kind: ShapeKind, i: usize) -> String {
    match kind {
        ShapeKind::Enum => format!("variant {i}"),
        _ => format!("field {}", i + 1),
    }
}

/// A short rendering of node `at`, `depth` levels deep.
pub fn render(shape: &Shape, at: u32, depth: usize) -> String {
    let Some(n) = node(shape, at) else {
        return "?".into();
    };
    if depth == 0 && !n.children.is_empty() {
        return match n.name.as_str() {
            "" => "…".into(),
            name => format!("{name} {{ … }}"),
        };
    }
    let child = |i: usize| {
        n.children.get(i).map_or("?".into(), |(_, c)| {
            render(shape, *c, depth.saturating_sub(1))
        })
    };
    let list = |named: bool| -> String {
        n.children
            .iter()
            .take(8)
            .map(|(name, c)| {
                let inner = render(shape, *c, depth.saturating_sub(1));
                if named {
                    format!("{name}: {inner}")
                } else {
                    inner
                }
            })
            .chain((n.children.len() > 8).then(|| "…".to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match n.kind {
        ShapeKind::Unit => "()".into(),
        ShapeKind::Str => "String".into(),
        ShapeKind::Bytes => "bytes".into(),
        ShapeKind::Option => format!("Option<{}>", child(0)),
        ShapeKind::Seq => format!("Vec<{}>", child(0)),
        ShapeKind::Map => format!("Map<{}, {}>", child(0), child(1)),
        ShapeKind::Tuple => format!("({})", list(false)),
        ShapeKind::Array(size) => format!("[{}; {size}]", child(0)),
        ShapeKind::UnitStruct | ShapeKind::UnitVariant | ShapeKind::Opaque => n.name.clone(),
        ShapeKind::NewType
        | ShapeKind::TupleStruct
        | ShapeKind::NewTypeVariant
        | ShapeKind::TupleVariant => format!("{}({})", n.name, list(false)),
        ShapeKind::Struct | ShapeKind::StructVariant => {
            format!("{} {{ {} }}", n.name, list(true))
        }
        ShapeKind::Enum => {
            let variants: Vec<&str> = n.children.iter().map(|(v, _)| v.as_str()).collect();
            format!("enum {} {{ {} }}", n.name, variants.join(", "))
        }
        primitive => format!("{primitive:?}").to_lowercase(),
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
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Reordered {
        user_id: i64,
        order_id: String,
        items: Vec<Item>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct SameShapeOtherName {
        order_id: String,
        user_id: i64,
        items: Vec<Line>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Missing {
        order_id: String,
        user_id: i64,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct OtherType {
        order_id: String,
        user_id: i64,
        items: Vec<BadItem>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Item {
        sku: String,
        qty: i64,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Line {
        sku: String,
        qty: i64,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct BadItem {
        sku: String,
        qty: String,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Tree {
        label: String,
        children: Vec<Tree>,
    }

    fn shape<T: serde::de::DeserializeOwned>() -> Shape {
        flumen_sdk::shape::of::<T>().unwrap()
    }

    #[test]
    fn same_shapes_pass_whatever_their_names() {
        assert_eq!(compare(&shape::<Order>(), &shape::<Order>()), Ok(()));
        assert_eq!(
            compare(&shape::<Order>(), &shape::<SameShapeOtherName>()),
            Ok(())
        );
        assert_eq!(compare(&shape::<Tree>(), &shape::<Tree>()), Ok(()));
    }

    #[test]
    fn a_reorder_a_missing_field_and_another_type_are_found_where_they_are() {
        let reorder = compare(&shape::<Order>(), &shape::<Reordered>()).unwrap_err();
        assert_eq!(reorder.path, ".order_id");
        assert_eq!(reorder.upstream, "field 1 `order_id`");
        assert_eq!(reorder.downstream, "field 1 `user_id`");
        let missing = compare(&shape::<Order>(), &shape::<Missing>()).unwrap_err();
        assert_eq!(missing.path, "");
        assert_eq!(missing.upstream, "field 3 `items`");
        assert_eq!(missing.downstream, "no field 3");
        let other = compare(&shape::<Order>(), &shape::<OtherType>()).unwrap_err();
        assert_eq!(other.path, ".items[].qty");
        assert_eq!(
            (other.upstream.as_str(), other.downstream.as_str()),
            ("i64", "String")
        );
    }

    #[test]
    fn hostile_shapes_are_refused_or_compared_without_recursing_for_ever() {
        let cyclic = Shape {
            nodes: vec![ShapeNode {
                kind: ShapeKind::Seq,
                name: String::new(),
                children: vec![(String::new(), 0)],
            }],
            json: false,
        };
        assert_eq!(check(&cyclic), Ok(()));
        assert_eq!(compare(&cyclic, &cyclic), Ok(()));
        let dangling = Shape {
            nodes: vec![ShapeNode {
                kind: ShapeKind::Seq,
                name: String::new(),
                children: vec![(String::new(), 7)],
            }],
            json: false,
        };
        assert!(check(&dangling).is_err());
        assert!(compare(&dangling, &dangling).is_err());
        // A chain deeper than the comparison looks.
        let deep = Shape {
            nodes: (0..200u32)
                .map(|i| ShapeNode {
                    kind: ShapeKind::Option,
                    name: String::new(),
                    children: vec![(String::new(), (i + 1).min(199))],
                })
                .collect(),
            json: false,
        };
        let too_deep = compare(&deep, &deep).unwrap_err();
        assert!(too_deep.upstream.contains("too deeply"), "{too_deep}");
        assert!(render(&deep, 0, 3).len() < 200);
    }
}
