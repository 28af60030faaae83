//! Layer-level tensor-parallel sharding with egg.
//!
//! A decoder layer is written as a term over its linears, norms, attention core and MLP activation. Rewrites
//! introduce the sharded alternatives (column- and row-parallel linears, head-split attention, sequence-
//! parallel norms) together with the collectives they need; extraction with the cost model's costs picks
//! the cheapest program for the candidate's tensor-parallel degree. The extracted term lists the
//! collectives of one layer, which the planner counts and the runtime lowers.

use egg::{
    CostFunction, EGraph, Id, Language, RecExpr, Rewrite, Runner, StopReason, define_language,
    rewrite,
};
use std::time::Duration;

define_language! {
    /// The layer-level language. Leaves are weight names (`q`, `k`, `v`, `o`, `gate`, `up`, `down`,
    /// `fc1`, `fc2`) and the layer input `x`.
    pub enum LayerLang {
        // Unsharded ops.
        "linear" = Linear([Id; 2]),
        "norm" = Norm(Id),
        "attn" = Attn([Id; 3]),
        "act" = Act([Id; 2]),
        "gelu" = Gelu(Id),
        "add" = Add([Id; 2]),
        // Sharded ops (each rank holds 1/tp of the weight or heads).
        "linear-col" = LinearCol([Id; 2]),
        "linear-row" = LinearRow([Id; 2]),
        "attn-heads" = AttnHeads([Id; 3]),
        "act-shard" = ActShard([Id; 2]),
        "gelu-shard" = GeluShard(Id),
        "norm-seq" = NormSeq(Id),
        "add-seq" = AddSeq([Id; 2]),
        // Layout markers and collectives.
        "split-cols" = SplitCols(Id),
        "gather-cols" = GatherCols(Id),
        "allreduce" = AllReduce(Id),
        "reduce-scatter" = ReduceScatter(Id),
        "all-gather" = AllGather(Id),
        "scatter-seq" = ScatterSeq(Id),
        Symbol(egg::Symbol),
    }
}

/// The architecture shape of the layer term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpKind {
    /// SwiGLU: `down(silu(gate(x)) * up(x))`.
    Gated,
    /// `fc2(gelu(fc1(x)))`.
    Gelu,
}

/// Builds the unsharded term of one pre-norm decoder layer.
pub fn layer_term(mlp: MlpKind) -> RecExpr<LayerLang> {
    let mlp_s = match mlp {
        MlpKind::Gated => "(linear down (act (linear gate (norm h)) (linear up (norm h))))",
        MlpKind::Gelu => "(linear fc2 (gelu (linear fc1 (norm h))))",
    };
    let attn =
        "(add x (linear o (attn (linear q (norm x)) (linear k (norm x)) (linear v (norm x)))))";
    let s = format!(
        "(add {attn} {})",
        mlp_s.replace(" h)", &format!(" {attn})"))
    );
    s.parse().expect("the layer term is well formed")
}

/// The rewrites of tensor parallelism (and, with `sequence_parallel`, of sequence parallelism).
pub fn tp_rules(sequence_parallel: bool) -> Vec<Rewrite<LayerLang, ()>> {
    let mut rules: Vec<Rewrite<LayerLang, ()>> = vec![
        // Column-parallel linear: each rank computes 1/tp of the output features.
        rewrite!("col"; "(linear ?w ?x)" => "(gather-cols (linear-col ?w ?x))"),
        // Row-parallel linear on column-split input: partial sums, then all-reduce.
        rewrite!("row"; "(linear ?w (gather-cols ?x))" => "(allreduce (linear-row ?w ?x))"),
        // Head-split attention consumes head-split q, k, v.
        rewrite!("heads"; "(attn (gather-cols ?q) (gather-cols ?k) (gather-cols ?v))" => "(gather-cols (attn-heads ?q ?k ?v))"),
        // Elementwise activations commute with the column split.
        rewrite!("act"; "(act (gather-cols ?a) (gather-cols ?b))" => "(gather-cols (act-shard ?a ?b))"),
        rewrite!("gelu"; "(gelu (gather-cols ?a))" => "(gather-cols (gelu-shard ?a))"),
    ];
    if sequence_parallel {
        rules.extend([
            // Megatron sequence parallelism: all-reduce = reduce-scatter (sequence) + all-gather; the norm
            // and residual add between them run on sequence shards.
            rewrite!("sp-ar"; "(allreduce ?y)" => "(all-gather (reduce-scatter ?y))"),
            rewrite!("sp-add"; "(add ?r (all-gather ?y))" => "(all-gather (add-seq (scatter-seq ?r) ?y))"),
            rewrite!("sp-norm"; "(norm (all-gather ?y))" => "(all-gather (norm-seq ?y))"),
            rewrite!("sp-scatter"; "(scatter-seq (all-gather ?y))" => "?y"),
        ]);
    }
    rules
}

/// Per-op costs used by extraction, in seconds for one micro-batch (forward and backward together).
#[derive(Clone, Debug)]
pub struct LayerCosts {
    /// Tensor-parallel degree.
    pub tp: u64,
    /// Time of each linear, unsharded, by weight name.
    pub linear: Vec<(String, f64)>,
    /// Attention core, unsharded.
    pub attn: f64,
    /// A norm, unsharded.
    pub norm: f64,
    /// An elementwise op (activation, residual add) on the layer's hidden activation, unsharded.
    pub elementwise: f64,
    /// All-reduce of one hidden activation across the tp group (forward + backward).
    pub allreduce: f64,
    /// Reduce-scatter (or all-gather) of one hidden activation across the tp group.
    pub reduce_scatter: f64,
    /// All-gather of a column-split activation (what a missing row-parallel pairing costs).
    pub gather_cols: f64,
}

struct CostFn<'a> {
    c: &'a LayerCosts,
}

impl CostFn<'_> {
    fn linear(&self, expr: &LayerLang, w: Id, egraph_syms: &dyn Fn(Id) -> Option<String>) -> f64 {
        let _ = expr;
        egraph_syms(w)
            .and_then(|name| {
                self.c
                    .linear
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, t)| *t)
            })
            .unwrap_or(0.0)
    }
}

/// Extracts the cheapest program with a cost function that needs to see weight names; egg's extractor
/// only sees child costs, so weight names are resolved from the e-graph before extraction.
pub struct ShardedLayer {
    /// The extracted term.
    pub term: RecExpr<LayerLang>,
    /// Its cost (seconds per micro-batch).
    pub cost: f64,
    /// Why equality saturation stopped.
    pub stop_reason: String,
    /// E-graph size at the end.
    pub egraph_nodes: usize,
}

impl ShardedLayer {
    /// Number of occurrences of each collective in the layer, forward only.
    pub fn collectives(&self) -> LayerCollectives {
        let mut c = LayerCollectives::default();
        for n in self.term.as_ref() {
            match n {
                LayerLang::AllReduce(_) => c.all_reduce += 1,
                LayerLang::ReduceScatter(_) => c.reduce_scatter += 1,
                LayerLang::AllGather(_) => c.all_gather += 1,
                LayerLang::GatherCols(_) => c.gather_cols += 1,
                _ => {}
            }
        }
        c
    }
}

/// Collectives per layer per forward pass (backward has the transposed ones, same count).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerCollectives {
    /// All-reduces of the hidden activation.
    pub all_reduce: u32,
    /// Reduce-scatters along the sequence.
    pub reduce_scatter: u32,
    /// All-gathers along the sequence.
    pub all_gather: u32,
    /// All-gathers of column-split features (only when a layer cannot pair column and row).
    pub gather_cols: u32,
}

/// Runs equality saturation with the tp rules and extracts the cheapest layer program.
pub fn shard_layer(mlp: MlpKind, costs: &LayerCosts, sequence_parallel: bool) -> ShardedLayer {
    let expr = layer_term(mlp);
    if costs.tp <= 1 {
        let cost = unsharded_cost(&expr, costs);
        return ShardedLayer {
            term: expr,
            cost,
            stop_reason: "tp=1: nothing to shard".into(),
            egraph_nodes: 0,
        };
    }
    let runner: Runner<LayerLang, ()> = Runner::default()
        .with_iter_limit(16)
        .with_node_limit(5_000)
        .with_time_limit(Duration::from_millis(200))
        .with_expr(&expr)
        .run(&tp_rules(sequence_parallel));
    let stop = match &runner.stop_reason {
        Some(StopReason::Saturated) => "saturated".to_string(),
        Some(r) => format!("{r:?}"),
        None => "unknown".to_string(),
    };
    tracing::debug!(tp = costs.tp, sp = sequence_parallel, stop = %stop, nodes = runner.egraph.total_size(), "tp sharding e-graph");
    let egraph = &runner.egraph;
    let root = runner.roots[0];
    let weight_name = |id: Id| -> Option<String> {
        egraph[id].nodes.iter().find_map(|n| match n {
            LayerLang::Symbol(s) => Some(s.as_str().to_string()),
            _ => None,
        })
    };
    let cf = TpCost {
        c: costs,
        names: &weight_name,
    };
    let extractor = egg::Extractor::new(egraph, cf);
    let (cost, term) = extractor.find_best(root);
    ShardedLayer {
        term,
        cost,
        stop_reason: stop,
        egraph_nodes: egraph.total_size(),
    }
}

struct TpCost<'a> {
    c: &'a LayerCosts,
    names: &'a dyn Fn(Id) -> Option<String>,
}

impl CostFunction<LayerLang> for TpCost<'_> {
    type Cost = f64;
    fn cost<C: FnMut(Id) -> f64>(&mut self, enode: &LayerLang, mut costs: C) -> f64 {
        let tp = self.c.tp.max(1) as f64;
        let own = CostFn { c: self.c };
        let me = match enode {
            LayerLang::Linear([w, _]) => own.linear(enode, *w, self.names),
            LayerLang::LinearCol([w, _]) | LayerLang::LinearRow([w, _]) => {
                own.linear(enode, *w, self.names) / tp
            }
            LayerLang::Attn(_) => self.c.attn,
            LayerLang::AttnHeads(_) => self.c.attn / tp,
            LayerLang::Norm(_) => self.c.norm,
            LayerLang::NormSeq(_) => self.c.norm / tp,
            LayerLang::Act(_) | LayerLang::Gelu(_) | LayerLang::Add(_) => self.c.elementwise,
            LayerLang::ActShard(_) | LayerLang::GeluShard(_) | LayerLang::AddSeq(_) => {
                self.c.elementwise / tp
            }
            LayerLang::AllReduce(_) => self.c.allreduce,
            LayerLang::ReduceScatter(_) | LayerLang::AllGather(_) => self.c.reduce_scatter,
            LayerLang::GatherCols(_) => self.c.gather_cols,
            LayerLang::SplitCols(_) | LayerLang::ScatterSeq(_) | LayerLang::Symbol(_) => 0.0,
        };
        enode.fold(me, |sum, id| sum + costs(id))
    }
}

fn unsharded_cost(expr: &RecExpr<LayerLang>, c: &LayerCosts) -> f64 {
    let mut eg: EGraph<LayerLang, ()> = EGraph::default();
    let root = eg.add_expr(expr);
    eg.rebuild();
    let names = |id: Id| -> Option<String> {
        eg[id].nodes.iter().find_map(|n| match n {
            LayerLang::Symbol(s) => Some(s.as_str().to_string()),
            _ => None,
        })
    };
    let ex = egg::Extractor::new(&eg, TpCost { c, names: &names });
    ex.find_best_cost(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs(tp: u64) -> LayerCosts {
        LayerCosts {
            tp,
            linear: ["q", "k", "v", "o"]
                .iter()
                .map(|n| (n.to_string(), 1.0))
                .chain(["gate", "up", "down"].iter().map(|n| (n.to_string(), 2.7)))
                .collect(),
            attn: 1.5,
            norm: 0.05,
            elementwise: 0.05,
            allreduce: 0.3,
            reduce_scatter: 0.15,
            gather_cols: 0.6,
        }
    }

    #[test]
    fn megatron_sharding_is_extracted() {
        let s = shard_layer(MlpKind::Gated, &costs(4), false);
        let c = s.collectives();
        assert_eq!(
            c.all_reduce, 2,
            "one all-reduce after attention, one after the MLP: {}",
            s.term
        );
        assert_eq!(c.gather_cols, 0, "{}", s.term);
        let text = s.term.to_string();
        assert!(
            text.contains("attn-heads")
                && text.contains("linear-row o")
                && text.contains("linear-row down"),
            "{text}"
        );
    }

    #[test]
    fn sequence_parallel_replaces_all_reduce() {
        let s = shard_layer(MlpKind::Gated, &costs(4), true);
        let c = s.collectives();
        assert_eq!(c.all_reduce, 0, "{}", s.term);
        assert_eq!(c.reduce_scatter, 2, "{}", s.term);
        assert!(c.all_gather >= 2, "{}", s.term);
    }

    #[test]
    fn tp1_is_unsharded() {
        let s = shard_layer(MlpKind::Gelu, &costs(1), false);
        assert_eq!(s.collectives(), LayerCollectives::default());
        assert!(s.cost > 0.0);
    }
}
