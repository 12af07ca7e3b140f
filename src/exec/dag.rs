//! The DAG model: named nodes and dependency edges, validated once, with
//! iterative algorithms only (a 1,000,000-node chain must not overflow the
//! stack).

use std::collections::{HashMap, VecDeque};

use super::error::{ExecError, Result};

/// A validated DAG. Node indices are dense, `0..len()`.
#[derive(Debug, Clone)]
pub struct Dag {
    names: Vec<String>,
    index: HashMap<String, usize>,
    deps: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
    topo: Vec<usize>,
}

#[derive(Debug, Default)]
pub struct DagBuilder {
    names: Vec<String>,
    index: HashMap<String, usize>,
    edges: Vec<(String, String)>,
    duplicate: Option<String>,
}

impl DagBuilder {
    /// Add a node. Adding a name twice makes `build` fail.
    pub fn add_node(mut self, name: impl Into<String>) -> Self {
        self.push_node(name.into());
        self
    }

    /// `to` depends on `from` (`from` runs first).
    pub fn add_edge(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.edges.push((from.into(), to.into()));
        self
    }

    pub fn push_node(&mut self, name: String) {
        if self.index.contains_key(&name) {
            self.duplicate.get_or_insert(name);
            return;
        }
        self.index.insert(name.clone(), self.names.len());
        self.names.push(name);
    }

    pub fn push_edge(&mut self, from: String, to: String) {
        self.edges.push((from, to));
    }

    pub fn build(self) -> Result<Dag> {
        if let Some(name) = self.duplicate {
            return Err(ExecError::DuplicateTask {
                name,
                location: String::new(),
            });
        }
        let n = self.names.len();
        let mut deps = vec![Vec::new(); n];
        let mut dependents = vec![Vec::new(); n];
        for (from, to) in self.edges {
            let t = *self
                .index
                .get(&to)
                .ok_or_else(|| ExecError::UnknownTask(to.clone()))?;
            let f = *self.index.get(&from).ok_or_else(|| ExecError::UnknownDep {
                task: to.clone(),
                dep: from.clone(),
                location: String::new(),
            })?;
            if !deps[t].contains(&f) {
                deps[t].push(f);
                dependents[f].push(t);
            }
        }
        let mut dag = Dag {
            names: self.names,
            index: self.index,
            deps,
            dependents,
            topo: Vec::new(),
        };
        dag.topo = dag.toposort()?;
        Ok(dag)
    }
}

impl Dag {
    pub fn builder() -> DagBuilder {
        DagBuilder::default()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn lookup(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn deps(&self, i: usize) -> &[usize] {
        &self.deps[i]
    }

    pub fn dependents(&self, i: usize) -> &[usize] {
        &self.dependents[i]
    }

    /// All nodes, dependencies before dependents.
    pub fn topo_order(&self) -> &[usize] {
        &self.topo
    }

    /// Kahn's algorithm; on a cycle, report one cycle in full.
    fn toposort(&self) -> Result<Vec<usize>> {
        let n = self.len();
        let mut waiting: Vec<usize> = self.deps.iter().map(|d| d.len()).collect();
        let mut queue: VecDeque<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = queue.pop_front() {
            order.push(i);
            for &d in &self.dependents[i] {
                waiting[d] -= 1;
                if waiting[d] == 0 {
                    queue.push_back(d);
                }
            }
        }
        if order.len() == n {
            return Ok(order);
        }
        // Every node left has a dependency that is also left: walk them
        // until a node repeats; the walk from its first visit is a cycle.
        let start = (0..n).find(|&i| waiting[i] > 0).expect("a node is left");
        let mut pos: HashMap<usize, usize> = HashMap::new();
        let mut path: Vec<usize> = Vec::new();
        let mut cur = start;
        loop {
            if let Some(&p) = pos.get(&cur) {
                let mut cycle: Vec<String> =
                    path[p..].iter().map(|&i| self.names[i].clone()).collect();
                cycle.push(self.names[cur].clone());
                return Err(ExecError::Cycle(cycle));
            }
            pos.insert(cur, path.len());
            path.push(cur);
            cur = *self.deps[cur]
                .iter()
                .find(|&&d| waiting[d] > 0)
                .expect("left nodes have left deps");
        }
    }

    /// `targets` and everything they depend on, as a membership mask.
    pub fn closure(&self, targets: &[usize]) -> Vec<bool> {
        let mut keep = vec![false; self.len()];
        let mut stack: Vec<usize> = targets.to_vec();
        while let Some(i) = stack.pop() {
            if !keep[i] {
                keep[i] = true;
                stack.extend_from_slice(&self.deps[i]);
            }
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_is_reported_in_full() {
        let err = Dag::builder()
            .add_node("a")
            .add_node("b")
            .add_node("c")
            .add_node("d")
            .add_edge("b", "a")
            .add_edge("c", "b")
            .add_edge("a", "c")
            .add_edge("a", "d")
            .build()
            .unwrap_err();
        let ExecError::Cycle(c) = err else {
            panic!("{err}")
        };
        assert_eq!(c.len(), 4);
        assert_eq!(c.first(), c.last());
        let mut members = c[..3].to_vec();
        members.sort();
        assert_eq!(members, ["a", "b", "c"]);
    }

    #[test]
    fn self_loop_is_a_cycle() {
        let err = Dag::builder()
            .add_node("a")
            .add_edge("a", "a")
            .build()
            .unwrap_err();
        assert_eq!(err.to_string(), "dependency cycle: a -> a");
    }

    #[test]
    fn million_node_chain_builds_without_overflow() {
        let n = 1_000_000;
        let mut b = Dag::builder();
        for i in 0..n {
            b.push_node(format!("t{i}"));
            if i > 0 {
                b.push_edge(format!("t{}", i - 1), format!("t{i}"));
            }
        }
        let dag = b.build().unwrap();
        assert_eq!(dag.topo_order().len(), n);
        assert_eq!(dag.topo_order()[0], 0);
        assert!(dag.closure(&[n - 1]).iter().all(|&k| k));
    }

    #[test]
    fn duplicates_and_unknowns() {
        assert!(matches!(
            Dag::builder().add_node("a").add_node("a").build(),
            Err(ExecError::DuplicateTask { .. })
        ));
        assert!(matches!(
            Dag::builder().add_node("a").add_edge("zz", "a").build(),
            Err(ExecError::UnknownDep { .. })
        ));
    }
}
