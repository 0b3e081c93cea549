//! The pipeline as a graph ([`Graph`], made by `PipelineConfig::graph` from the configuration
//! alone), rendered for Graphviz (`dot`) or Mermaid: what `flumen graph` prints; the web view
//! draws the same graph.

use super::status::Graph;
use std::fmt::Write;

impl Graph {
    /// The graph in Graphviz's language: `dot -Tsvg` draws it.
    pub fn to_dot(&self, name: &str) -> String {
        let mut out = format!("digraph {} {{\n", dot_id(name));
        out.push_str("  rankdir=LR;\n  node [fontname=\"Helvetica\", fontsize=11];\n");
        for n in &self.nodes {
            let shape = match n.kind {
                "source" => "shape=cds, style=filled, fillcolor=\"#dbeafe\"",
                "sink" => "shape=folder, style=filled, fillcolor=\"#dcfce7\"",
                _ => "shape=box, style=\"rounded,filled\", fillcolor=\"#fef9c3\"",
            };
            let label = format!("{}\n{}", n.name, n.detail);
            let _ = writeln!(
                out,
                "  {} [label={}, {shape}];",
                dot_id(&n.name),
                dot_id(&label)
            );
        }
        for e in &self.edges {
            let label = match e.port.as_str() {
                "main" => String::new(),
                port => format!(" [label={}, style=dashed]", dot_id(port)),
            };
            let _ = writeln!(out, "  {} -> {}{label};", dot_id(&e.from), dot_id(&e.to));
        }
        if let Some(sink) = &self.dead_letter {
            let _ = writeln!(
                out,
                "  {} [xlabel=\"dead letters of every stage\"];",
                dot_id(sink)
            );
        }
        out.push_str("}\n");
        out
    }

    /// The graph as a Mermaid flowchart.
    pub fn to_mermaid(&self) -> String {
        // Mermaid ids are plain words: number the nodes, and label them with their names.
        let id = |name: &str| {
            self.nodes
                .iter()
                .position(|n| n.name == name)
                .map_or_else(|| "n_unknown".to_string(), |i| format!("n{i}"))
        };
        let mut out = String::from("flowchart LR\n");
        for (i, n) in self.nodes.iter().enumerate() {
            let label = format!(
                "{}<br/><small>{}</small>",
                mermaid_text(&n.name),
                mermaid_text(&n.detail)
            );
            let (open, close) = match n.kind {
                "source" => ("([", "])"),
                "sink" => ("[(", ")]"),
                _ => ("[", "]"),
            };
            let _ = writeln!(out, "  n{i}{open}\"{label}\"{close}");
        }
        for e in &self.edges {
            let (from, to) = (id(&e.from), id(&e.to));
            match e.port.as_str() {
                "main" => {
                    let _ = writeln!(out, "  {from} --> {to}");
                }
                port => {
                    let _ = writeln!(out, "  {from} -.->|\"{}\"| {to}", mermaid_text(port));
                }
            }
        }
        if let Some(sink) = &self.dead_letter {
            let _ = writeln!(out, "  %% {sink}: dead letters of every stage");
        }
        out
    }
}

/// A Graphviz ID: always quoted, so any name is one.
fn dot_id(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

/// Text inside a quoted Mermaid label: quotes and angle brackets become entity codes.
fn mermaid_text(text: &str) -> String {
    text.replace('"', "#34;")
        .replace('<', "#60;")
        .replace('>', "#62;")
}
