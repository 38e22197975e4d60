//! The mesh as a Graphviz `dot` graph (what `annexmesh graph` and
//! `GET /health/graph` print): members, gateways, cluster nodes and
//! clusters, the links between them, the paths in use, each one's state.
//! Pure rendering: the caller gathers the facts.

use std::collections::BTreeMap;
use std::fmt::Write;

/// What a vertex is; a repository that is several is drawn as the first
/// of gateway, node, member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Gateway,
    Node,
    Member,
    Cluster,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vertex {
    pub kind: Kind,
    pub label: String,
    /// alive, suspected, down, self, … (colours the vertex).
    pub state: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub label: String,
    /// A path in use (drawn bold).
    pub in_use: bool,
    /// A membership edge (cluster → node), drawn dotted.
    pub membership: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Graph {
    vertices: BTreeMap<String, Vertex>,
    edges: Vec<Edge>,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Adds (or refines) the vertex `id`: the stronger kind wins, a label
    /// or state already known is kept unless one is given.
    pub fn vertex(&mut self, id: &str, kind: Kind, label: Option<&str>, state: Option<&str>) {
        let v = self.vertices.entry(id.to_owned()).or_insert(Vertex {
            kind,
            label: id.to_owned(),
            state: None,
        });
        v.kind = v.kind.min(kind);
        if let Some(l) = label.filter(|l| !l.is_empty()) {
            v.label = l.to_owned();
        }
        if let Some(s) = state {
            v.state = Some(s.to_owned());
        }
    }

    /// Adds an edge (once: a repeat only marks it in use).
    pub fn edge(&mut self, edge: Edge) {
        if let Some(e) = self
            .edges
            .iter_mut()
            .find(|e| e.from == edge.from && e.to == edge.to && e.membership == edge.membership)
        {
            e.in_use |= edge.in_use;
            return;
        }
        self.edges.push(edge);
    }

    pub fn render(&self) -> String {
        let mut out = String::from("digraph annexmesh {\n  rankdir=LR;\n");
        for (id, v) in &self.vertices {
            let shape = match v.kind {
                Kind::Gateway => "box",
                Kind::Node => "cylinder",
                Kind::Member => "ellipse",
                Kind::Cluster => "folder",
            };
            let color = match v.state.as_deref() {
                Some("down") => "red",
                Some("suspected") => "orange",
                Some("alive") | Some("self") => "darkgreen",
                _ => "black",
            };
            let label = match &v.state {
                Some(s) => format!("{}\\n{}", quote(&v.label), quote(s)),
                None => quote(&v.label),
            };
            let _ = writeln!(
                out,
                "  \"{}\" [shape={shape}, color={color}, label=\"{label}\"];",
                quote(id)
            );
        }
        for e in &self.edges {
            let style = match (e.membership, e.in_use) {
                (true, _) => "dotted",
                (false, true) => "bold",
                (false, false) => "solid",
            };
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\" [style={style}, label=\"{}\"];",
                quote(&e.from),
                quote(&e.to),
                quote(&e.label)
            );
        }
        out.push_str("}\n");
        out
    }
}

/// Text safe inside a dot string: quotes and backslashes escaped, control
/// characters dropped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_kinds_states_paths_and_escapes() {
        let mut g = Graph::new();
        g.vertex("u1", Kind::Member, Some("alpha"), Some("alive"));
        g.vertex("u1", Kind::Gateway, None, None);
        g.vertex("u2", Kind::Node, Some("n\"2\\"), Some("down"));
        let e = |in_use| Edge {
            from: "u1".into(),
            to: "u2".into(),
            label: "1.0".into(),
            in_use,
            membership: false,
        };
        g.edge(e(false));
        g.edge(e(true));
        let dot = g.render();
        assert!(dot.starts_with("digraph annexmesh {\n"), "{dot}");
        assert!(
            dot.contains("\"u1\" [shape=box, color=darkgreen, label=\"alpha\\nalive\"];"),
            "{dot}"
        );
        assert!(dot.contains("label=\"n\\\"2\\\\\\ndown\""), "{dot}");
        assert_eq!(dot.matches(" -> ").count(), 1, "{dot}");
        assert!(
            dot.contains("\"u1\" -> \"u2\" [style=bold, label=\"1.0\"];"),
            "{dot}"
        );
        assert!(dot.ends_with("}\n"));
    }
}
