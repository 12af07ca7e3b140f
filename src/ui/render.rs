//! The graph as DOT, Mermaid, JSON and SVG. Every format carries the same
//! facts: each task's name, key prefix, time and state (with its colour
//! from `State::colours`), and the dependency edges.

use std::fmt::Write;

use super::html::esc;
use super::layout::{layout, Params};
use super::model::{short_duration, Graph, Node};

/// Above this many tasks the SVG is compact: small boxes without text
/// (each keeps its name and state as a tooltip and its link), so a
/// 1,000-task pipeline fits on a screen; the legend counts the states.
pub const COMPACT_ABOVE: usize = 150;

/// `1a2b3c4d · 1.2s` (either part may be missing).
fn detail(n: &Node) -> String {
    let mut parts = Vec::new();
    if let Some(k) = n.key {
        parts.push(k.to_string()[..8].to_string());
    }
    if let Some(ms) = n.duration_ms {
        parts.push(short_duration(ms));
    }
    parts.join(" · ")
}

fn title(g: &Graph) -> String {
    match (g.run, g.ok) {
        (Some(id), Some(ok)) => {
            format!(
                "{} · run {id} ({})",
                g.dag,
                if ok { "ok" } else { "failed" }
            )
        }
        _ if g.in_progress => format!("{} · in progress", g.dag),
        _ => format!("{} · no run yet", g.dag),
    }
}

fn dot_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn dot(g: &Graph) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "digraph {} {{", dot_str(&g.dag));
    let _ = writeln!(
        o,
        "  graph [rankdir=TB, labelloc=t, fontname=\"sans-serif\", label={}];",
        dot_str(&title(g))
    );
    let _ = writeln!(
        o,
        "  node [shape=box, style=\"rounded,filled\", fontname=\"sans-serif\", fontsize=11];"
    );
    let _ = writeln!(o, "  edge [color=\"#78909c\"];");
    for n in &g.nodes {
        let (fill, stroke) = n.state.colours();
        let mut label = n.name.clone();
        let d = detail(n);
        if !d.is_empty() {
            label += "\n";
            label += &d;
        }
        label += "\n";
        label += &n.state.label();
        let _ = writeln!(
            o,
            "  {} [label={}, fillcolor=\"{fill}\", color=\"{stroke}\", class=\"{}\"{}];",
            dot_str(&n.name),
            dot_str(&label),
            n.state.class(),
            if matches!(n.state, super::model::State::Skipped) {
                ", style=\"rounded,filled,dashed\""
            } else {
                ""
            }
        );
    }
    for &(f, t) in &g.edges {
        let _ = writeln!(
            o,
            "  {} -> {};",
            dot_str(&g.nodes[f].name),
            dot_str(&g.nodes[t].name)
        );
    }
    o += "}\n";
    o
}

/// Mermaid's `flowchart`. NB: Mermaid renders at most 500 edges by default
/// (its `maxEdges`); a larger graph says so in a comment.
pub fn mermaid(g: &Graph) -> String {
    let mut o = String::from("flowchart TD\n");
    let _ = writeln!(o, "  %% {}", title(g));
    if g.edges.len() > 500 {
        let _ = writeln!(
            o,
            "  %% {} edges: more than Mermaid's default maxEdges (500); raise it to render this graph",
            g.edges.len()
        );
    }
    // NB: ids n0, n1, ... (a task may be called `end`, which Mermaid reserves);
    // task names hold only [A-Za-z0-9_.+@-], never a quote.
    let q = |s: &str| s.replace('"', "#quot;");
    let mut classes: Vec<(String, &str, &str)> = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let d = detail(n);
        let mut label = q(&n.name);
        if !d.is_empty() {
            label += "<br/>";
            label += &d;
        }
        label += "<br/>";
        label += &n.state.label();
        let class = n.state.class().replace('-', "_");
        let _ = writeln!(o, "  n{i}[\"{label}\"]:::{class}");
        if !classes.iter().any(|(c, ..)| *c == class) {
            let (fill, stroke) = n.state.colours();
            classes.push((class, fill, stroke));
        }
    }
    for &(f, t) in &g.edges {
        let _ = writeln!(o, "  n{f} --> n{t}");
    }
    for (c, fill, stroke) in classes {
        let _ = writeln!(o, "  classDef {c} fill:{fill},stroke:{stroke},color:#000");
    }
    o
}

pub fn json(g: &Graph) -> String {
    serde_json::to_string_pretty(&g.to_json()).expect("json") + "\n"
}

/// SVG options: `link` gives a node's href (none in a standalone file).
pub struct SvgOptions<'a> {
    pub link: Option<&'a dyn Fn(&Node) -> String>,
    /// Also write the `<?xml ...?>` prolog (a file; not inline in HTML).
    pub standalone: bool,
}

const CHAR_W: f64 = 6.6;

pub fn svg(g: &Graph, opts: &SvgOptions) -> String {
    let compact = g.nodes.len() > COMPACT_ABOVE;
    let labels: Vec<[String; 3]> = g
        .nodes
        .iter()
        .map(|n| [n.name.clone(), detail(n), n.state.label()])
        .collect();
    let params = if compact {
        Params {
            node_w: vec![14.0; g.nodes.len()],
            node_h: 14.0,
            gap_x: 4.0,
            gap_y: 26.0,
            max_row: 60,
            margin: 12.0,
        }
    } else {
        Params {
            node_w: labels
                .iter()
                .map(|l| {
                    let chars = l.iter().map(|s| s.chars().count()).max().unwrap_or(0);
                    (chars as f64 * CHAR_W + 20.0).clamp(90.0, 260.0)
                })
                .collect(),
            node_h: 52.0,
            gap_x: 24.0,
            gap_y: 40.0,
            max_row: 12,
            margin: 16.0,
        }
    };
    let l = layout(g.nodes.len(), &g.edges, &params);
    let head = 28.0;
    let (w, h) = (l.width.max(240.0), l.height + head);
    let mut o = String::new();
    if opts.standalone {
        o += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
    }
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"dag{}\" width=\"{w:.0}\" height=\"{h:.0}\" viewBox=\"0 0 {w:.0} {h:.0}\" font-family=\"sans-serif\" font-size=\"11\" role=\"img\" aria-label=\"{}\">",
        if compact { " compact" } else { "" },
        esc(&title(g))
    );
    let _ = writeln!(o, "<title>{}</title>", esc(&title(g)));
    o += "<defs><marker id=\"dag-arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"6\" markerHeight=\"6\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#78909c\"/></marker></defs>\n";
    let _ = writeln!(
        o,
        "<text x=\"{:.0}\" y=\"18\" font-size=\"13\" font-weight=\"bold\">{}</text>",
        params.margin,
        esc(&title(g))
    );
    let _ = writeln!(o, "<g class=\"edges\" transform=\"translate(0 {head})\" fill=\"none\" stroke=\"#78909c\" stroke-width=\"{}\"{}>",
        if compact { "0.6" } else { "1.2" },
        if compact { " stroke-opacity=\"0.35\"" } else { "" });
    for &(f, t) in &g.edges {
        let (fx, fy) = l.pos[f];
        let (tx, ty) = l.pos[t];
        let (x1, y1) = (fx + params.node_w[f] / 2.0, fy + params.node_h);
        let (x2, y2) = (tx + params.node_w[t] / 2.0, ty);
        let my = (y1 + y2) / 2.0;
        let _ = writeln!(
            o,
            "<path class=\"edge\" data-from=\"{}\" data-to=\"{}\" d=\"M{x1:.1} {y1:.1} C{x1:.1} {my:.1} {x2:.1} {my:.1} {x2:.1} {y2:.1}\"{}/>",
            esc(&g.nodes[f].name),
            esc(&g.nodes[t].name),
            if compact { "" } else { " marker-end=\"url(#dag-arrow)\"" }
        );
    }
    o += "</g>\n";
    let _ = writeln!(o, "<g class=\"nodes\" transform=\"translate(0 {head})\">");
    for (i, n) in g.nodes.iter().enumerate() {
        let (x, y) = l.pos[i];
        let (fill, stroke) = n.state.colours();
        let href = opts.link.map(|f| f(n));
        if let Some(h) = &href {
            let _ = write!(o, "<a href=\"{}\">", esc(h));
        }
        let _ = write!(
            o,
            "<g class=\"node {}\" data-task=\"{}\" data-state=\"{}\" data-route=\"{}\" data-reason=\"{}\" data-key=\"{}\" data-layer=\"{}\">",
            n.state.class(),
            esc(&n.name),
            n.state.class(),
            esc(n.state.route()),
            esc(n.reason.as_deref().unwrap_or("")),
            n.key.map(|k| k.to_string()).unwrap_or_default(),
            l.layer[i],
        );
        let [name, det, state] = &labels[i];
        let tip = [name.as_str(), det.as_str(), state.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("\n");
        let _ = write!(o, "<title>{}</title>", esc(&tip));
        let dash = if matches!(n.state, super::model::State::Skipped) {
            " stroke-dasharray=\"4 3\""
        } else {
            ""
        };
        let _ = write!(
            o,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"{}\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"1.5\"{dash}/>",
            params.node_w[i],
            params.node_h,
            if compact { 2 } else { 6 }
        );
        if !compact {
            let cx = x + params.node_w[i] / 2.0;
            let _ = write!(
                o,
                "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>",
                y + 16.0,
                esc(name)
            );
            let _ = write!(
                o,
                "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-family=\"monospace\" font-size=\"10\">{}</text>",
                y + 30.0,
                esc(det)
            );
            let _ = write!(
                o,
                "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\" fill=\"{stroke}\">{}</text>",
                y + 44.0,
                esc(state)
            );
        }
        o += "</g>";
        if href.is_some() {
            o += "</a>";
        }
        o += "\n";
    }
    o += "</g>\n</svg>\n";
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::model::{Graph, State};
    use dagfs::index::{RunRecord, RunTask};

    fn known() -> Graph {
        let t = |name: &str, route: &str, status: &str, reason: Option<&str>| RunTask {
            task: name.into(),
            key: None,
            route: route.into(),
            status: status.into(),
            miss_reason: reason.map(Into::into),
            since_ms: None,
            deps: Vec::new(),
            duration_ms: Some(1500),
            error: None,
        };
        let rec = RunRecord {
            id: 7,
            dag: "demo".into(),
            started_ms: 0,
            finished_ms: 1,
            ok: false,
            tasks: vec![
                t("fetch", "key", "cached", None),
                t("build", "miss", "executed", Some("input changed")),
                t("test", "miss", "failed", Some("new")),
                t("deploy", "", "skipped", None),
            ],
        };
        let names: Vec<String> = ["fetch", "build", "test", "deploy"]
            .map(String::from)
            .to_vec();
        let deps = vec![
            vec![],
            vec!["fetch".into()],
            vec!["build".into()],
            vec!["test".into(), "build".into()],
        ];
        Graph::build("demo", &names, &deps, Some(&rec), None)
    }

    #[test]
    fn dot_has_nodes_edges_and_colours() {
        let d = dot(&known());
        assert!(d.starts_with("digraph \"demo\" {"), "{d}");
        assert!(d.contains("label=\"demo · run 7 (failed)\""), "{d}");
        assert!(
            d.contains("\"fetch\" [label=\"fetch\nhit key\", fillcolor=\"#a5d6a7\""),
            "{d}"
        );
        assert!(
            d.contains(
                "\"build\" [label=\"build\n1.5s\nran input changed\", fillcolor=\"#ffcc80\""
            ),
            "{d}"
        );
        assert!(
            d.contains("\"test\" [label=\"test\n1.5s\nfailed\", fillcolor=\"#ef9a9a\""),
            "{d}"
        );
        assert!(
            d.contains("class=\"skipped\", style=\"rounded,filled,dashed\""),
            "{d}"
        );
        for e in [
            "\"fetch\" -> \"build\";",
            "\"build\" -> \"test\";",
            "\"build\" -> \"deploy\";",
            "\"test\" -> \"deploy\";",
        ] {
            assert!(d.contains(e), "{e} in {d}");
        }
        assert_eq!(d.matches(" -> ").count(), 4);
    }

    #[test]
    fn mermaid_has_nodes_edges_and_classes() {
        let m = mermaid(&known());
        assert!(m.starts_with("flowchart TD\n"));
        assert!(m.contains("n0[\"fetch<br/>hit key\"]:::hit_key"), "{m}");
        assert!(
            m.contains("n2[\"test<br/>1.5s<br/>failed\"]:::failed"),
            "{m}"
        );
        assert!(m.contains("n0 --> n1\n"), "{m}");
        assert!(
            m.contains("classDef ran_input_changed fill:#ffcc80,stroke:#e65100"),
            "{m}"
        );
        assert_eq!(m.matches(" --> ").count(), 4);
    }

    #[test]
    fn svg_nodes_carry_state_colour_and_link() {
        let link = |n: &Node| format!("/task/7/{}", n.name);
        let s = svg(
            &known(),
            &SvgOptions {
                link: Some(&link),
                standalone: false,
            },
        );
        assert_eq!(s.matches("<g class=\"node ").count(), 4);
        assert_eq!(s.matches("<path class=\"edge\"").count(), 4);
        assert!(s.contains("<a href=\"/task/7/test\"><g class=\"node failed\" data-task=\"test\" data-state=\"failed\""), "{s}");
        assert!(s.contains("fill=\"#ef9a9a\" stroke=\"#b71c1c\""), "{s}");
        assert!(s.contains("data-from=\"fetch\" data-to=\"build\""), "{s}");
        assert!(!s.contains("<?xml"));
    }

    #[test]
    fn a_large_graph_is_compact_and_whole() {
        let n = 1000;
        let names: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
        let deps: Vec<Vec<String>> = (0..n)
            .map(|i| {
                if i < 10 {
                    vec![]
                } else {
                    vec![format!("t{}", i / 2), format!("t{}", i - 10)]
                }
            })
            .collect();
        let g = Graph::build("big", &names, &deps, None, None);
        assert!(g.nodes.iter().all(|n| n.state == State::NotRun));
        let s = svg(
            &g,
            &SvgOptions {
                link: None,
                standalone: true,
            },
        );
        assert!(s.contains("class=\"dag compact\""));
        assert_eq!(s.matches("<g class=\"node ").count(), n);
        assert_eq!(s.matches("<path class=\"edge\"").count(), g.edges.len());
        // Every task's name survives as its tooltip.
        assert!(s.contains("<title>t999\nnot run</title>"));
    }
}
