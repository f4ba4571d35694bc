//! An upper bound on the GPU allocation any placement — online or offline, knowing the whole
//! arrival order — could reach with a given set of pods: a linear-programming relaxation.
//!
//! Nodes are grouped into types (GPU model, GPU count, CPU, memory); pods with GPUs into shapes
//! (CPU, memory, GPU request, accepted models). `x[s][t]` is how many pods of shape `s` go on nodes
//! of type `t`, a real number in `[0, count_s]`, allowed only where the model is accepted and the
//! node has the GPUs a member needs. Per node type, the pods' GPU, CPU and memory together stay
//! within the type's total. The LP maximises the GPU share placed.
//!
//! Any real placement is a solution (CPU-only pods may be left out, which only frees room), so the
//! optimum bounds every policy. It ignores that a share must fit within one GPU and a pod within
//! one node, so it is optimistic.

use model::{Fleet, GPU_MILLI_PER_GPU, GpuModelId, GpuRequest};
use sched::Demand;
use std::collections::BTreeMap;

/// (cpu, memory, GPU share per GPU, GPUs per member, members, accepted model bits).
type ShapeKey = (u64, u64, u32, u32, u32, u64);

/// Why the bound could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum BoundError {
    #[error("the LP solver failed: {0}")]
    Solver(String),
    #[error("the fleet has no GPUs")]
    NoGpus,
}

/// The largest GPU share, in percent of the fleet's capacity, that `pods` (all of them arrived)
/// could occupy on `fleet`.
pub fn allocation_bound(fleet: &Fleet, pods: &[Demand]) -> Result<f64, BoundError> {
    use good_lp::{Expression, ProblemVariables, Solution, SolverModel, constraint, microlp, variable};

    let capacity = fleet.total_gpus() * u64::from(GPU_MILLI_PER_GPU);
    if capacity == 0 {
        return Err(BoundError::NoGpus);
    }
    // Node types: (model, gpus, cpu, memory) -> count.
    let mut types: BTreeMap<(u16, u8, u64, u64), u64> = BTreeMap::new();
    for n in &fleet.nodes {
        if let (Some(m), true) = (n.gpu_model, n.gpu_count > 0) {
            *types.entry((m.0, n.gpu_count, n.cpu_milli, n.memory_mib)).or_default() += 1;
        }
    }
    // Pod shapes with GPUs: (cpu, memory, gpu per member milli, gpus per member, members, models).
    let mut shapes: BTreeMap<ShapeKey, (u64, usize)> = BTreeMap::new();
    for (i, d) in pods.iter().enumerate() {
        let (milli, gpus) = match d.gpu {
            GpuRequest::None => continue,
            GpuRequest::Fraction { gpu_milli } => (gpu_milli, 1),
            GpuRequest::Gang { gpus_per_node, .. } => (GPU_MILLI_PER_GPU, gpus_per_node),
        };
        let models = (0..fleet.gpu_models.len().min(64) as u16)
            .filter(|&m| d.models.allows(GpuModelId(m)))
            .fold(0u64, |acc, m| acc | 1 << m);
        let e = shapes.entry((d.cpu_milli, d.memory_mib, milli, gpus, d.members(), models)).or_insert((0, i));
        e.0 += 1;
    }
    let types: Vec<_> = types.into_iter().collect();
    let mut vars = ProblemVariables::new();
    let mut objective = Expression::default();
    let mut per_shape: Vec<(Expression, u64)> = Vec::new();
    let mut gpu_use: Vec<Expression> = vec![Expression::default(); types.len()];
    let mut cpu_use: Vec<Expression> = vec![Expression::default(); types.len()];
    let mut mem_use: Vec<Expression> = vec![Expression::default(); types.len()];
    for (&(cpu, mem, milli, gpus, members, models), &(count, _)) in &shapes {
        let mut placed = Expression::default();
        let per_member_gpu = f64::from(milli) * f64::from(gpus);
        for (t, &((m, node_gpus, node_cpu, node_mem), _)) in types.iter().enumerate() {
            if models & (1 << m.min(63)) == 0 || u32::from(node_gpus) < gpus || node_cpu < cpu || node_mem < mem {
                continue;
            }
            // Members placed on this type (a gang's members count one by one).
            let x = vars.add(variable().min(0.0).max((count * u64::from(members)) as f64));
            placed += x;
            objective += per_member_gpu * x;
            gpu_use[t] += per_member_gpu * x;
            cpu_use[t] += (cpu as f64) * x;
            mem_use[t] += (mem as f64) * x;
        }
        per_shape.push((placed, count * u64::from(members)));
    }
    let mut problem = vars.maximise(objective.clone()).using(microlp);
    for (placed, count) in per_shape {
        problem = problem.with(constraint!(placed <= count as f64));
    }
    for (t, &((_, node_gpus, node_cpu, node_mem), n)) in types.iter().enumerate() {
        let n = n as f64;
        problem = problem.with(constraint!(gpu_use[t].clone() <= n * f64::from(node_gpus) * 1000.0));
        problem = problem.with(constraint!(cpu_use[t].clone() <= n * node_cpu as f64));
        problem = problem.with(constraint!(mem_use[t].clone() <= n * node_mem as f64));
    }
    let solution = problem.solve().map_err(|e| BoundError::Solver(e.to_string()))?;
    let value = solution.eval(&objective);
    Ok((100.0 * value / capacity as f64).min(100.0))
}
