//! A layered layout of a DAG (a small Sugiyama: longest-path layers,
//! barycenter ordering, rows wrapped when a layer is wide). Written here
//! because the layout crate we tried, `layout-rs` 0.1.3, took 110 s for a
//! 1,000-task pipeline (1.9 s with its crossing reduction off; 4.3 s for
//! 300 tasks with it on), while this one takes milliseconds
//! (`scripts/bench-graph`); graphviz is not needed either, so the output
//! is the same on every machine. Deterministic: ties break by index.

/// Where each node goes.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Top-left corner of each node's box.
    pub pos: Vec<(f64, f64)>,
    pub width: f64,
    pub height: f64,
    /// Each node's layer (0: no dependencies).
    pub layer: Vec<usize>,
}

pub struct Params {
    pub node_w: Vec<f64>,
    pub node_h: f64,
    pub gap_x: f64,
    pub gap_y: f64,
    /// At most this many nodes side by side; a wider layer is wrapped.
    pub max_row: usize,
    pub margin: f64,
}

/// Lay out `n` nodes with `edges` (from, to): `to` below `from`.
pub fn layout(n: usize, edges: &[(usize, usize)], p: &Params) -> Layout {
    let mut succ = vec![Vec::new(); n];
    let mut pred = vec![Vec::new(); n];
    for &(f, t) in edges {
        if f < n && t < n && f != t {
            succ[f].push(t);
            pred[t].push(f);
        }
    }
    // Longest-path layering (Kahn's order). Nodes left on a cycle, which a
    // validated pipeline cannot have, stay in layer 0.
    let mut layer = vec![0usize; n];
    let mut indeg: Vec<usize> = pred.iter().map(Vec::len).collect();
    let mut queue: std::collections::VecDeque<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    while let Some(i) = queue.pop_front() {
        for &s in &succ[i] {
            layer[s] = layer[s].max(layer[i] + 1);
            indeg[s] -= 1;
            if indeg[s] == 0 {
                queue.push_back(s);
            }
        }
    }
    let layers = layer.iter().max().map_or(0, |m| m + 1);
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); layers];
    for i in 0..n {
        rows[layer[i]].push(i);
    }
    // Barycenter ordering: a few sweeps down and up, each node moved to the
    // mean position of its neighbours in the layer before.
    let mut at = vec![0f64; n];
    let place = |rows: &Vec<Vec<usize>>, at: &mut Vec<f64>| {
        for r in rows {
            for (k, &i) in r.iter().enumerate() {
                at[i] = k as f64 / r.len().max(1) as f64;
            }
        }
    };
    place(&rows, &mut at);
    for sweep in 0..8 {
        let down = sweep % 2 == 0;
        let order: Vec<usize> = if down {
            (1..layers).collect()
        } else {
            (0..layers.saturating_sub(1)).rev().collect()
        };
        for l in order {
            let mut keyed: Vec<(f64, usize)> = rows[l]
                .iter()
                .map(|&i| {
                    let nb = if down { &pred[i] } else { &succ[i] };
                    let b = if nb.is_empty() {
                        at[i]
                    } else {
                        nb.iter().map(|&j| at[j]).sum::<f64>() / nb.len() as f64
                    };
                    (b, i)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            rows[l] = keyed.into_iter().map(|(_, i)| i).collect();
            let len = rows[l].len().max(1) as f64;
            for (k, &i) in rows[l].iter().enumerate() {
                at[i] = k as f64 / len;
            }
        }
    }
    // Wrap wide layers into rows of at most `max_row`.
    let max_row = p.max_row.max(1);
    let lines: Vec<&[usize]> = rows.iter().flat_map(|r| r.chunks(max_row)).collect();
    // x: each node as near as it can be to the mean centre of its
    // dependencies (already placed: rows go top down), in its row's order,
    // never overlapping; a row whose nodes have no dependencies is packed
    // from the left.
    let line_w = |line: &[usize]| -> f64 {
        line.iter().map(|&i| p.node_w[i]).sum::<f64>()
            + p.gap_x * line.len().saturating_sub(1) as f64
    };
    // NB: no row reaches past the widest row packed: drift to the right
    // would otherwise add up row after row.
    let cap = p.margin + lines.iter().map(|l| line_w(l)).fold(0f64, f64::max);
    let mut pos = vec![(0f64, 0f64); n];
    let mut placed = vec![false; n];
    let mut rights = Vec::with_capacity(lines.len());
    for (r, line) in lines.iter().enumerate() {
        let y = p.margin + r as f64 * (p.node_h + p.gap_y);
        let mut right = p.margin - p.gap_x;
        for &i in *line {
            let parents: Vec<f64> = pred[i]
                .iter()
                .filter(|&&j| placed[j])
                .map(|&j| pos[j].0 + p.node_w[j] / 2.0)
                .collect();
            let want = if parents.is_empty() {
                f64::MIN
            } else {
                parents.iter().sum::<f64>() / parents.len() as f64 - p.node_w[i] / 2.0
            };
            let x = want.max(right + p.gap_x);
            pos[i] = (x, y);
            right = x + p.node_w[i];
        }
        let mut limit = cap;
        for &i in line.iter().rev() {
            pos[i].0 = pos[i].0.min(limit - p.node_w[i]);
            limit = pos[i].0 - p.gap_x;
        }
        let mut left = p.margin;
        for &i in *line {
            pos[i].0 = pos[i].0.max(left);
            left = pos[i].0 + p.node_w[i] + p.gap_x;
        }
        right = left - p.gap_x;
        for &i in *line {
            placed[i] = true;
        }
        rights.push(right);
    }
    let widest = rights.iter().copied().fold(0f64, f64::max) - p.margin;
    let height = if lines.is_empty() {
        2.0 * p.margin
    } else {
        2.0 * p.margin + lines.len() as f64 * (p.node_h + p.gap_y) - p.gap_y
    };
    Layout {
        pos,
        width: widest + 2.0 * p.margin,
        height,
        layer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(n: usize, max_row: usize) -> Params {
        Params {
            node_w: vec![10.0; n],
            node_h: 10.0,
            gap_x: 5.0,
            gap_y: 20.0,
            max_row,
            margin: 0.0,
        }
    }

    #[test]
    fn dependents_are_below_their_dependencies() {
        // a diamond and a chain: 0 -> 1, 0 -> 2, 1 -> 3, 2 -> 3, 3 -> 4
        let edges = [(0, 1), (0, 2), (1, 3), (2, 3), (3, 4)];
        let l = layout(5, &edges, &params(5, 10));
        assert_eq!(l.layer, vec![0, 1, 1, 2, 3]);
        for &(f, t) in &edges {
            assert!(l.pos[f].1 < l.pos[t].1, "{f} above {t}: {:?}", l.pos);
        }
        // Same layer, side by side without overlap.
        assert_eq!(l.pos[1].1, l.pos[2].1);
        assert!((l.pos[1].0 - l.pos[2].0).abs() >= 15.0);
    }

    #[test]
    fn a_chain_is_drawn_straight_down() {
        // 0 and 1 side by side; 2 under 1, 3 under 2.
        let l = layout(4, &[(1, 2), (2, 3)], &params(4, 10));
        assert_eq!(l.pos[1].0, l.pos[2].0);
        assert_eq!(l.pos[2].0, l.pos[3].0);
        assert!(l.pos[0].0 + 10.0 <= l.pos[1].0);
    }

    #[test]
    fn a_wide_layer_wraps_into_rows() {
        let l = layout(7, &[], &params(7, 3));
        let mut ys: Vec<i64> = l.pos.iter().map(|p| p.1 as i64).collect();
        ys.sort();
        ys.dedup();
        assert_eq!(ys.len(), 3, "{:?}", l.pos);
        assert!(l.width <= 3.0 * 10.0 + 2.0 * 5.0 + 0.01);
    }

    #[test]
    fn barycenter_untangles_a_crossing() {
        // 0 -> 3, 1 -> 2: in index order the edges cross.
        let l = layout(4, &[(0, 3), (1, 2)], &params(4, 10));
        assert!(l.pos[3].0 < l.pos[2].0, "{:?}", l.pos);
    }
}
