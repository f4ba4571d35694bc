//! A power-cap guard that wraps any [`Policy`]: a site never draws more than its grid cap.
//!
//! The guard works on plain numbers the caller fills in from its energy model (this crate knows
//! no physics): per site, the cap and the draw with nothing allocated; per node, the worst-case
//! site watts each allocated GPU adds, and how much of that follows the GPU's power cap. Site
//! draw is linear in the allocated GPUs at a given outdoor temperature (IT plus the cooling that
//! carries it), so these numbers are exact for the temperature they were computed at; callers
//! compute them at the hottest hour they will meet, so the bound holds all year.
//!
//! Two modes:
//!
//! - [`PowerMode::Admission`]: work is admitted only while every site's worst case (every
//!   allocated GPU at its board limit) fits its cap;
//! - [`PowerMode::Dynamic`]: work is admitted while the worst case fits with every running GPU
//!   of the site capped at `min_cap`; the guard then lowers GPU power caps until the site fits.
//!   Caps are per job so that a node agent can apply them to the GPUs of one job; whose caps go
//!   down is a choice of the policy ([`CapShare`]): every running job alike (the default), or
//!   the longest-running first, each down to `min_cap` before the next is touched.
//!
//! How it holds the inner policy to the budget: before the policy's round, GPUs beyond the power
//! headroom are hidden (on the most fragmented nodes first, so whole free nodes stay usable for
//! gangs): a node hidden whole has its free GPUs withheld ([`ClusterState::withhold_free_gpus`],
//! no allocation and no index update, so hiding tens of thousands of nodes stays cheap), the one
//! node hidden in part holds placeholder allocations; after the round, both are given back. A start that still
//! exceeds the budget (a policy that preempted and started in ways the headroom did not foresee)
//! is rolled back: released from the cluster and dropped from the decisions, so it stays queued.

use crate::cluster::{ClusterState, GpuShare, MemberPlacement, Placement};
use crate::demand::{Demand, ModelSet};
use crate::policy::{Decision, Policy};
use crate::queue::{Queue, QueuedJob};
use model::{GPU_MILLI_PER_GPU, GpuRequest, NodeId, SimDuration, SimTime, Workload, WorkloadId};
use std::sync::Arc;

/// Placeholder allocations use ids from here down; traces never come near.
const PLACEHOLDER_BASE: u32 = u32::MAX;
const MILLI: f64 = 1000.0;

/// How the guard keeps sites under their caps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PowerMode {
    /// Admit work only while the worst case fits.
    Admission,
    /// Also lower GPU power caps of running work, down to `min_cap` of the board limit, shared
    /// out as `share` says; with `cap_hosts`, first limit the CPU packages of a site's GPU nodes
    /// to their typical draw ([`NodeWatts::host_cut_watts_per_gpu`]) while the site sheds watts.
    Dynamic { min_cap: f64, share: CapShare, cap_hosts: bool },
}

/// Whose GPU caps the dynamic mode lowers when a site's worst case exceeds its cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CapShare {
    /// Every running job of the site to the same cap, as high as the site allows. Throughput
    /// lost to a cap is convex in the cut (nothing while the cap stays above what the work
    /// draws, then more for every further step), so an even cut loses least in total.
    #[default]
    Even,
    /// Longest-running jobs first, each down to `min_cap` before the next is touched: the fewest
    /// jobs slowed, for sites where capping a job costs a fixed price (re-tuning, SLAs).
    OldestFirst,
    /// First every job down to the cap its work does not feel (what it draws uncapped, so the
    /// cut costs nothing), then the jobs with the most GPUs, down to `min_cap`, before smaller
    /// ones. A cap slows a job by about the same time whatever its size, while a wide job gives
    /// back watts in proportion to its GPUs: so for the mean completion time, cutting few wide
    /// jobs deeply costs less than cutting every job a little.
    WidestFirst,
    /// First every job down to the cap its work does not feel, then the jobs the policy ranks
    /// lowest ([`Policy::shed_order`]) down to `min_cap`, one after the other: slowing a job the
    /// policy would preempt first delays only that job, while slowing a high-ranked one also
    /// delays whoever waits for its GPUs. Jobs the policy does not rank come last, widest first.
    LowestRankFirst,
}

/// One site's budget, watts at the grid meter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SiteBudget {
    /// The grid connection.
    pub cap_watts: f64,
    /// Draw with nothing allocated (idle IT, cooling, building).
    pub base_watts: f64,
}

/// Worst-case figures of one node's GPUs, site watts per whole allocated GPU.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NodeWatts {
    /// Index of the node's site in [`PowerBudget::sites`].
    pub site: u32,
    /// Added per allocated GPU with the GPU at its board limit and the host at full load.
    pub full_watts_per_gpu: f64,
    /// The part of `full_watts_per_gpu` that is the GPU's board limit (what a power cap scales).
    pub board_watts_per_gpu: f64,
    /// Caps at or above this fraction of the board limit do not slow the node's typical work
    /// (what it draws uncapped); 1 when unknown, so every cut counts as a cost.
    pub free_cap: f64,
    /// What a CPU package power limit at the host's typical draw takes off `full_watts_per_gpu`
    /// (RAPL on the node's CPUs; typical work does not feel it). Counted only with `cap_hosts`.
    pub host_cut_watts_per_gpu: f64,
}

impl Default for NodeWatts {
    fn default() -> Self {
        NodeWatts {
            site: 0,
            full_watts_per_gpu: 0.0,
            board_watts_per_gpu: 0.0,
            free_cap: 1.0,
            host_cut_watts_per_gpu: 0.0,
        }
    }
}

impl NodeWatts {
    /// Added per allocated GPU capped at `cap` (fraction of its board limit).
    pub fn watts_per_gpu(&self, cap: f64) -> f64 {
        self.full_watts_per_gpu - (1.0 - cap.clamp(0.0, 1.0)) * self.board_watts_per_gpu
    }
}

/// Per-site caps and per-node marginal watts, as plain numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct PowerBudget {
    pub sites: Vec<SiteBudget>,
    /// By node id.
    pub nodes: Vec<NodeWatts>,
    pub mode: PowerMode,
}

impl PowerBudget {
    fn node(&self, id: NodeId) -> NodeWatts {
        self.nodes.get(id.index()).copied().unwrap_or_default()
    }

    fn floor_cap(&self) -> f64 {
        match self.mode {
            PowerMode::Admission => 1.0,
            PowerMode::Dynamic { min_cap, .. } => min_cap.clamp(0.0, 1.0),
        }
    }

    fn caps_hosts(&self) -> bool {
        matches!(self.mode, PowerMode::Dynamic { cap_hosts: true, .. })
    }

    /// Worst-case site watts a GPU of `n` adds at GPU cap `cap`, hosts capped when the mode may.
    fn watts_per_gpu(&self, n: &NodeWatts, cap: f64) -> f64 {
        n.watts_per_gpu(cap) - if self.caps_hosts() { n.host_cut_watts_per_gpu } else { 0.0 }
    }

    fn share(&self) -> CapShare {
        match self.mode {
            PowerMode::Admission => CapShare::Even,
            PowerMode::Dynamic { share, .. } => share,
        }
    }

    fn add(&self, loads: &mut [(f64, f64)], p: &Placement) {
        for m in &p.members {
            let n = self.node(m.node);
            let gpus = m.gpus.iter().map(|g| f64::from(g.milli)).sum::<f64>() / MILLI;
            if let Some(l) = loads.get_mut(n.site as usize) {
                l.0 += gpus * self.watts_per_gpu(&n, 1.0);
                l.1 += gpus * n.board_watts_per_gpu;
            }
        }
    }
}

fn is_placeholder(id: WorkloadId) -> bool {
    id.0 > PLACEHOLDER_BASE - (1 << 24)
}

/// The guard's state across rounds.
#[derive(Clone, Debug)]
pub struct PowerGuard {
    /// Figures at the design point (the hottest hour): what admission must hold to.
    budget: PowerBudget,
    /// Figures for the present conditions (an hour cooler than the design point needs less
    /// cooling), when the caller gives them: what the dynamic mode's caps are set against.
    present: Option<PowerBudget>,
    /// GPU power cap per site (fraction of the board limit) set after the last round.
    site_caps: Vec<f64>,
    /// Per site, whether its GPU nodes' CPU packages are held to their typical draw.
    hosts_capped: Vec<bool>,
    placeholders: Vec<WorkloadId>,
    /// Starts rolled back in the last round, for [`PowerGuard::take_undone`].
    undone: Vec<WorkloadId>,
    /// Order in which running jobs were started (lower first), for choosing whom to cap.
    started_seq: rustc_hash::FxHashMap<WorkloadId, u64>,
    next_seq: u64,
    /// GPU power cap of each running job below 1, fraction of the board limit.
    job_caps: rustc_hash::FxHashMap<WorkloadId, f64>,
    /// Bumped whenever a job's cap changes.
    caps_epoch: u64,
    /// Position of each running job in the policy's last [`Policy::shed_order`].
    shed_rank: rustc_hash::FxHashMap<WorkloadId, u32>,
    /// Per site, the fewest watts a GPU of the site adds at the floor cap (infinite: no GPUs).
    cheapest_per_gpu: Vec<f64>,
    /// The nodes grouped by their power figures, as the cluster keeps them summed.
    groups: Option<NodeGroups>,
    /// Starts rolled back over the run.
    pub refused_starts: u64,
}

/// The fleet's nodes grouped by site and power figures (at the design point and at present):
/// the cluster sums the GPU-thousandths allocated in each group ([`ClusterState::set_node_groups`]),
/// so a site's load is a few products, whatever the number of nodes or running jobs.
#[derive(Clone, Debug)]
struct NodeGroups {
    of_node: Arc<[u32]>,
    /// Per group: the figures of its nodes at the design point and at present.
    figures: Vec<(NodeWatts, NodeWatts)>,
    /// Per site: its nodes, and all their GPU-thousandths.
    site_nodes: Vec<Vec<NodeId>>,
    site_total_milli: Vec<u64>,
    /// Per site: the most watts one of its GPUs adds at the floor cap.
    dearest_per_gpu: Vec<f64>,
}

impl PowerGuard {
    pub fn new(budget: PowerBudget) -> PowerGuard {
        let site_caps = vec![1.0; budget.sites.len()];
        let floor = budget.floor_cap();
        let mut cheapest_per_gpu = vec![f64::INFINITY; budget.sites.len()];
        for n in budget.nodes.iter().filter(|n| n.full_watts_per_gpu > 0.0) {
            if let Some(c) = cheapest_per_gpu.get_mut(n.site as usize) {
                *c = c.min(budget.watts_per_gpu(n, floor));
            }
        }
        PowerGuard {
            budget,
            present: None,
            hosts_capped: vec![false; site_caps.len()],
            site_caps,
            placeholders: Vec::new(),
            undone: Vec::new(),
            started_seq: Default::default(),
            next_seq: 0,
            job_caps: Default::default(),
            caps_epoch: 0,
            shed_rank: Default::default(),
            cheapest_per_gpu,
            groups: None,
            refused_starts: 0,
        }
    }

    /// Groups the nodes of `fleet` by site and figures; keeps `old`'s grouping (so the cluster's
    /// sums stay valid) when the groups are the same nodes.
    fn group_nodes(&self, fleet: &model::Fleet, old: Option<&NodeGroups>) -> NodeGroups {
        let sites = self.budget.sites.len();
        let floor = self.budget.floor_cap();
        let mut index: rustc_hash::FxHashMap<[u64; 9], u32> = Default::default();
        let mut figures: Vec<(NodeWatts, NodeWatts)> = Vec::new();
        let mut of_node = Vec::with_capacity(fleet.nodes.len());
        let mut site_nodes = vec![Vec::new(); sites];
        let mut site_total_milli = vec![0u64; sites];
        let mut dearest_per_gpu = vec![0.0f64; sites];
        for id in fleet.node_ids() {
            let design = self.budget.node(id);
            let now = self.present.as_ref().map_or(design, |p| p.node(id));
            let key = [
                u64::from(design.site),
                design.full_watts_per_gpu.to_bits(),
                design.board_watts_per_gpu.to_bits(),
                design.free_cap.to_bits(),
                design.host_cut_watts_per_gpu.to_bits(),
                now.full_watts_per_gpu.to_bits(),
                now.board_watts_per_gpu.to_bits(),
                now.free_cap.to_bits(),
                now.host_cut_watts_per_gpu.to_bits(),
            ];
            let next = figures.len() as u32;
            let g = *index.entry(key).or_insert(next);
            if g == next {
                figures.push((design, now));
            }
            of_node.push(g);
            let s = design.site as usize;
            if s < sites {
                site_nodes[s].push(id);
                site_total_milli[s] += u64::from(fleet.node(id).gpu_count) * MILLI as u64;
                dearest_per_gpu[s] = dearest_per_gpu[s].max(self.budget.watts_per_gpu(&design, floor));
            }
        }
        let of_node: Arc<[u32]> = match old {
            Some(old) if *old.of_node == of_node[..] => old.of_node.clone(),
            _ => of_node.into(),
        };
        NodeGroups { of_node, figures, site_nodes, site_total_milli, dearest_per_gpu }
    }

    /// Groups the nodes of `cluster`'s fleet unless they are grouped already.
    fn group_if_stale(&mut self, cluster: &ClusterState) {
        if self.groups.as_ref().is_none_or(|g| g.of_node.len() != cluster.node_count()) {
            self.groups = Some(self.group_nodes(cluster.fleet(), None));
        }
    }

    /// Groups the nodes if not yet done and has the cluster keep their sums.
    fn install_groups(&mut self, cluster: &mut ClusterState) {
        self.group_if_stale(cluster);
        let Some(groups) = &self.groups else { return };
        if cluster.node_groups().is_none_or(|g| !Arc::ptr_eq(g, &groups.of_node)) {
            cluster.set_node_groups(groups.of_node.clone(), groups.figures.len());
        }
    }

    /// GPU-thousandths allocated per group (placeholders aside): the cluster's sums where it
    /// keeps this guard's grouping, else a walk over the allocations.
    fn group_milli<'a>(&self, groups: &NodeGroups, cluster: &'a ClusterState) -> std::borrow::Cow<'a, [u64]> {
        if cluster.node_groups().is_some_and(|g| Arc::ptr_eq(g, &groups.of_node)) {
            return std::borrow::Cow::Borrowed(cluster.group_allocated_milli());
        }
        let mut sums = vec![0u64; groups.figures.len()];
        for (id, p) in cluster.allocations() {
            if is_placeholder(*id) {
                continue;
            }
            for m in &p.members {
                if let Some(sum) = groups.of_node.get(m.node.index()).and_then(|&g| sums.get_mut(g as usize)) {
                    *sum += m.gpus.iter().map(|g| u64::from(g.milli)).sum::<u64>();
                }
            }
        }
        std::borrow::Cow::Owned(sums)
    }

    /// Per site: (worst-case watts at full GPU caps, capped share of it) of the real allocations,
    /// hosts capped when the mode may, and what capping the hosts takes off; from the figures at
    /// present (`present`) or at the design point.
    fn site_loads(&mut self, cluster: &ClusterState, present: bool) -> (Vec<(f64, f64)>, Vec<f64>) {
        self.group_if_stale(cluster);
        let figures = if present { self.present.as_ref().unwrap_or(&self.budget) } else { &self.budget };
        let mut loads: Vec<(f64, f64)> = figures.sites.iter().map(|s| (s.base_watts, 0.0)).collect();
        let mut cuts = vec![0.0; loads.len()];
        let Some(groups) = &self.groups else { return (loads, cuts) };
        let sums = self.group_milli(groups, cluster);
        for (&milli, (design, now)) in sums.iter().zip(&groups.figures) {
            if milli == 0 {
                continue;
            }
            let n = if present { now } else { design };
            let gpus = milli as f64 / MILLI;
            if let (Some(l), Some(c)) = (loads.get_mut(n.site as usize), cuts.get_mut(n.site as usize)) {
                l.0 += gpus * figures.watts_per_gpu(n, 1.0);
                l.1 += gpus * n.board_watts_per_gpu;
                *c += gpus * n.host_cut_watts_per_gpu;
            }
        }
        (loads, cuts)
    }

    pub fn budget(&self) -> &PowerBudget {
        &self.budget
    }

    /// Whether [`PowerGuard::set_shed_order`] is read (the [`CapShare::LowestRankFirst`] share).
    pub fn wants_shed_order(&self) -> bool {
        self.budget.share() == CapShare::LowestRankFirst
    }

    /// The policy's running jobs, the first to be slowed first ([`Policy::shed_order`]); call
    /// after the policy's round and before [`PowerGuard::after`].
    pub fn set_shed_order(&mut self, order: Vec<WorkloadId>) {
        self.shed_rank = order.into_iter().enumerate().map(|(k, id)| (id, k as u32)).collect();
    }

    /// GPU power cap of every site after the last round, fraction of the board limit.
    pub fn site_caps(&self) -> &[f64] {
        &self.site_caps
    }

    /// Per site, whether the CPU packages of its GPU nodes are to be held to their typical draw
    /// (only with `cap_hosts`, and only while the site's worst case needs it).
    pub fn hosts_capped(&self) -> &[bool] {
        &self.hosts_capped
    }

    /// GPU power cap of running job `id`, fraction of the board limit (1 = uncapped).
    pub fn job_cap(&self, id: WorkloadId) -> f64 {
        self.job_caps.get(&id).copied().unwrap_or(1.0)
    }

    /// Changes whenever some job's cap changed in [`PowerGuard::after`].
    pub fn caps_epoch(&self) -> u64 {
        self.caps_epoch
    }

    /// Worst-case draw of site `s` under the current caps and conditions, watts: every allocated
    /// GPU at its job's cap, every host at full load or, where hosts are capped, at its limit.
    pub fn site_worst_watts(&self, cluster: &ClusterState, s: usize) -> f64 {
        let figures = self.present.as_ref().unwrap_or(&self.budget);
        let hosts_capped = figures.caps_hosts() && self.hosts_capped.get(s).copied().unwrap_or(false);
        let mut watts = figures.sites.get(s).map_or(0.0, |b| b.base_watts);
        // No GPU capped: the cluster's sums per group of like nodes give it in a few products,
        // whatever the number of running jobs.
        if self.job_caps.values().all(|&c| c >= 1.0)
            && let Some(groups) = self.groups.as_ref().filter(|g| g.of_node.len() == cluster.node_count())
        {
            let sums = self.group_milli(groups, cluster);
            for (&milli, (design, now)) in sums.iter().zip(&groups.figures) {
                let n = if self.present.is_some() { now } else { design };
                if milli == 0 || n.site as usize != s {
                    continue;
                }
                let host = if hosts_capped { n.host_cut_watts_per_gpu } else { 0.0 };
                watts += milli as f64 / MILLI * (n.watts_per_gpu(1.0) - host);
            }
            return watts;
        }
        for (id, p) in cluster.allocations() {
            if is_placeholder(*id) {
                continue;
            }
            let cap = self.job_cap(*id);
            for m in &p.members {
                let n = figures.node(m.node);
                if n.site as usize != s {
                    continue;
                }
                let gpus = m.gpus.iter().map(|g| f64::from(g.milli)).sum::<f64>() / MILLI;
                let host = if hosts_capped { n.host_cut_watts_per_gpu } else { 0.0 };
                watts += gpus * (n.watts_per_gpu(cap) - host);
            }
        }
        watts
    }

    /// Sets the figures of the present conditions (same sites and nodes as the budget, computed
    /// for the outdoor temperature until the next call) and re-sets the caps of running jobs
    /// against them. Admission still holds to the design point, where every running GPU at the
    /// floor cap fits: so whatever the weather does next, lowering caps can always bring a site
    /// back under its cap. Figures above the design point's are taken as the design point's.
    pub fn set_conditions(&mut self, cluster: &ClusterState, sites: Vec<SiteBudget>, nodes: Vec<NodeWatts>) {
        let sites = sites
            .into_iter()
            .zip(&self.budget.sites)
            .map(|(now, design)| SiteBudget {
                cap_watts: design.cap_watts,
                base_watts: now.base_watts.min(design.base_watts),
            })
            .collect();
        let nodes = nodes
            .into_iter()
            .zip(&self.budget.nodes)
            .map(|(now, design)| NodeWatts {
                site: design.site,
                full_watts_per_gpu: now.full_watts_per_gpu.min(design.full_watts_per_gpu),
                board_watts_per_gpu: now.board_watts_per_gpu.min(design.board_watts_per_gpu),
                free_cap: design.free_cap,
                host_cut_watts_per_gpu: now.host_cut_watts_per_gpu.min(design.host_cut_watts_per_gpu),
            })
            .collect();
        self.present = Some(PowerBudget { sites, nodes, mode: self.budget.mode });
        // The same nodes keep their group where their figures moved together (an hour's weather
        // moves every node of a model alike), so the cluster's sums stay valid.
        if let Some(old) = self.groups.take() {
            self.groups = Some(self.group_nodes(cluster.fleet(), Some(&old)));
        }
        if matches!(self.budget.mode, PowerMode::Dynamic { .. }) {
            self.set_job_caps(cluster);
        }
    }

    /// Hides the GPUs beyond each site's headroom behind placeholder allocations. Call before the
    /// inner policy's round; [`PowerGuard::after`] releases them.
    pub fn before(&mut self, cluster: &mut ClusterState) {
        // An idle cluster hides nothing: whatever single start the policy ranks first is kept if
        // it fits (the rollback in `after` checks), so a job that fits the cap alone is never
        // blocked forever by hidden GPUs that happen to break its shape.
        if cluster.running_count() == 0 {
            return;
        }
        self.install_groups(cluster);
        let (loads, _) = self.site_loads(cluster, false);
        let Some(groups) = self.groups.take() else { return };
        let floor = self.budget.floor_cap();
        // Per site: GPU-thousandths allocated, from the groups' sums.
        let mut allocated = vec![0u64; self.budget.sites.len()];
        for (&milli, (design, _)) in cluster.group_allocated_milli().iter().zip(&groups.figures) {
            if let Some(a) = allocated.get_mut(design.site as usize) {
                *a += milli;
            }
        }
        let mut next = PLACEHOLDER_BASE;
        for (s, site) in self.budget.sites.iter().enumerate() {
            // How many GPU-thousandths may still be allocated, at the site's dearest GPU.
            let at_floor = loads[s].0 - (1.0 - floor) * loads[s].1;
            let headroom = (site.cap_watts - at_floor).max(0.0);
            let dearest = groups.dearest_per_gpu[s];
            let allowed_milli = if dearest > 0.0 { (headroom / dearest * MILLI).floor() } else { f64::INFINITY };
            let free_total = groups.site_total_milli[s].saturating_sub(allocated[s]) as f64;
            let mut to_hide = free_total - allowed_milli;
            if to_hide <= 0.0 {
                continue;
            }
            // Only a site short of power has its nodes walked.
            let mut free_nodes: Vec<(u32, NodeId)> = groups.site_nodes[s]
                .iter()
                .filter_map(|&id| {
                    let free: u32 = cluster.gpu_free_milli(id).iter().map(|&m| u32::from(m)).sum();
                    (free > 0).then_some((free, id))
                })
                .collect();
            // Most fragmented nodes first; ties by id, highest first (first-fit starts low).
            free_nodes.sort_by_key(|&(f, id)| (f, std::cmp::Reverse(id.0)));
            for &(free, node) in &free_nodes {
                if to_hide <= 0.0 {
                    break;
                }
                // A node hidden whole is withheld: no allocation, no index update.
                if f64::from(free) <= to_hide {
                    to_hide -= cluster.withhold_free_gpus(node) as f64;
                    continue;
                }
                // The node's free GPUs in index order until enough is hidden: its whole ones in
                // one placeholder, each share of a GPU in one of its own.
                let mut whole: Vec<GpuShare> = Vec::new();
                let mut shares: Vec<GpuShare> = Vec::new();
                for (index, &milli) in cluster.gpu_free_milli(node).iter().enumerate() {
                    if to_hide <= 0.0 {
                        break;
                    }
                    if milli == 0 {
                        continue;
                    }
                    let share = GpuShare { index: index as u8, milli };
                    if u32::from(milli) >= GPU_MILLI_PER_GPU {
                        whole.push(share)
                    } else {
                        shares.push(share)
                    }
                    to_hide -= f64::from(milli);
                }
                let pieces =
                    std::iter::once(whole).filter(|w| !w.is_empty()).chain(shares.into_iter().map(|s| vec![s]));
                for gpus in pieces {
                    let gpu = match gpus.as_slice() {
                        [one] if u32::from(one.milli) < GPU_MILLI_PER_GPU => {
                            GpuRequest::Fraction { gpu_milli: u32::from(one.milli) }
                        }
                        _ => GpuRequest::Gang { nodes: 1, gpus_per_node: gpus.len() as u32 },
                    };
                    let demand = Demand { cpu_milli: 0, memory_mib: 0, gpu, models: ModelSet::any(), node_features: 0 };
                    let placement =
                        Placement { members: vec![MemberPlacement { node, cpu_milli: 0, memory_mib: 0, gpus }] };
                    // Ids a caller already uses up here (the server's blockers for nodes
                    // without an agent) are skipped.
                    while cluster.allocation(WorkloadId(next)).is_some() && next > PLACEHOLDER_BASE - (1 << 23) {
                        next -= 1;
                    }
                    let id = WorkloadId(next);
                    if cluster.allocate(id, &demand, placement).is_ok() {
                        self.placeholders.push(id);
                        next -= 1;
                    }
                }
            }
        }
        self.groups = Some(groups);
    }

    /// False when `demand` could not run under any site's cap even on an idle fleet, on the
    /// cheapest GPUs at the lowest cap the mode allows: such a job is refused, not queued forever.
    pub fn could_ever_fit(&self, demand: &Demand) -> bool {
        let gpus = demand.gpu.total_gpu_milli() as f64 / MILLI;
        if gpus <= 0.0 {
            return true;
        }
        self.budget
            .sites
            .iter()
            .zip(&self.cheapest_per_gpu)
            .any(|(site, &cheapest)| cheapest.is_finite() && site.base_watts + gpus * cheapest <= site.cap_watts)
    }

    /// The starts the last [`PowerGuard::after`] rolled back: the caller tells the policy
    /// ([`Policy::start_undone`]) so it does not count them as running.
    pub fn take_undone(&mut self) -> Vec<WorkloadId> {
        std::mem::take(&mut self.undone)
    }

    /// Releases the placeholders, rolls back any start the budget cannot carry, and sets each
    /// site's GPU cap. Returns the decisions that stand.
    pub fn after(&mut self, cluster: &mut ClusterState, decisions: Vec<Decision>) -> Vec<Decision> {
        for id in self.placeholders.drain(..) {
            let _ = cluster.release(id);
        }
        cluster.restore_withheld();
        self.install_groups(cluster);
        let floor = self.budget.floor_cap();
        let (mut loads, _) = self.site_loads(cluster, false);
        let over = |loads: &[(f64, f64)], s: usize| {
            self.budget.sites.get(s).is_some_and(|b| loads[s].0 - (1.0 - floor) * loads[s].1 > b.cap_watts)
        };
        let mut kept = Vec::with_capacity(decisions.len());
        // Roll back the latest starts first until every site fits.
        let mut refused = vec![false; decisions.len()];
        for (k, d) in decisions.iter().enumerate().rev() {
            let Decision::Start { job, placement } = d else { continue };
            let sites: Vec<usize> = placement.members.iter().map(|m| self.budget.node(m.node).site as usize).collect();
            if sites.iter().any(|&s| s < loads.len() && over(&loads, s)) && cluster.release(*job).is_ok() {
                let mut minus = vec![(0.0, 0.0); loads.len()];
                self.budget.add(&mut minus, placement);
                for (l, m) in loads.iter_mut().zip(minus) {
                    l.0 -= m.0;
                    l.1 -= m.1;
                }
                refused[k] = true;
                self.undone.push(*job);
                self.refused_starts += 1;
            }
        }
        for (d, r) in decisions.into_iter().zip(refused) {
            if !r {
                kept.push(d);
            }
        }
        for d in &kept {
            if let Decision::Start { job, .. } = d {
                self.started_seq.insert(*job, self.next_seq);
                self.next_seq += 1;
            }
        }
        self.set_job_caps(cluster);
        kept
    }

    /// Lowers running jobs' caps, as the budget's [`CapShare`] says, until every site's worst
    /// case fits.
    fn set_job_caps(&mut self, cluster: &ClusterState) {
        let mut caps: rustc_hash::FxHashMap<WorkloadId, f64> = Default::default();
        let (loads, cuts) = self.site_loads(cluster, true);
        // Order of starts is kept for running jobs only; swept now and then, not every round.
        if self.started_seq.len() > 2 * cluster.running_count() + 64 {
            self.started_seq.retain(|id, _| cluster.allocation(*id).is_some());
        }
        let figures = self.present.as_ref().unwrap_or(&self.budget);
        let mut excess: Vec<f64> =
            loads.iter().zip(&figures.sites).map(|(l, b)| (l.0 - b.cap_watts).max(0.0)).collect();
        // Hosts are capped (first, at no cost to typical work) on sites whose worst case with
        // hosts at full load does not fit; `loads` already counts them capped.
        let cuts = if figures.caps_hosts() { cuts } else { vec![0.0; loads.len()] };
        let hosts: Vec<bool> = loads
            .iter()
            .zip(&cuts)
            .zip(&figures.sites)
            .map(|((l, &cut), b)| cut > 0.0 && l.0 + cut > b.cap_watts)
            .collect();
        if hosts != self.hosts_capped {
            self.hosts_capped = hosts;
            self.caps_epoch += 1;
        }
        if excess.iter().all(|&e| e <= 0.0) {
            // Every site fits at full power (always so in admission mode): nobody is capped.
            self.site_caps.iter_mut().for_each(|c| *c = 1.0);
            if !self.job_caps.is_empty() {
                self.job_caps.clear();
                self.caps_epoch += 1;
            }
            return;
        }
        match self.budget.share() {
            CapShare::Even => self.even_caps(cluster, figures, &excess, &mut caps),
            CapShare::OldestFirst => self.oldest_first_caps(cluster, figures, &mut excess, &mut caps),
            CapShare::WidestFirst | CapShare::LowestRankFirst => {
                self.ranked_caps(cluster, figures, &mut excess, &mut caps)
            }
        }
        // Per site, the GPU-weighted mean cap (for reports).
        let mut sums = vec![(0.0f64, 0.0f64); self.site_caps.len()];
        for (id, p) in cluster.allocations() {
            if is_placeholder(*id) {
                continue;
            }
            let c = caps.get(id).copied().unwrap_or(1.0);
            for m in &p.members {
                let s = self.budget.node(m.node).site as usize;
                let g = m.gpus.iter().map(|g| f64::from(g.milli)).sum::<f64>() / MILLI;
                if let Some(x) = sums.get_mut(s) {
                    x.0 += c * g;
                    x.1 += g;
                }
            }
        }
        for (s, (cg, g)) in sums.into_iter().enumerate() {
            self.site_caps[s] = if g > 0.0 { cg / g } else { 1.0 };
        }
        if caps != self.job_caps {
            self.caps_epoch += 1;
            self.job_caps = caps;
        }
    }

    /// One cap per site, `1 - excess / board` of its running GPUs (not below the floor); a job
    /// over several sites takes the lowest of theirs.
    fn even_caps(
        &self,
        cluster: &ClusterState,
        figures: &PowerBudget,
        excess: &[f64],
        caps: &mut rustc_hash::FxHashMap<WorkloadId, f64>,
    ) {
        let floor = self.budget.floor_cap();
        let mut board = vec![0.0f64; excess.len()];
        let running = || cluster.allocations().filter(|(id, _)| !is_placeholder(**id));
        for (_, p) in running() {
            let mut per_site = vec![(0.0f64, 0.0f64); excess.len()];
            figures.add(&mut per_site, p);
            for (b, (_, x)) in board.iter_mut().zip(per_site) {
                *b += x;
            }
        }
        let site_cap: Vec<f64> = excess
            .iter()
            .zip(&board)
            .map(|(&e, &b)| if e <= 0.0 || b <= 0.0 { 1.0 } else { (1.0 - e / b).max(floor) })
            .collect();
        for (id, p) in running() {
            let cap = p
                .members
                .iter()
                .map(|m| site_cap.get(figures.node(m.node).site as usize).copied().unwrap_or(1.0))
                .fold(1.0, f64::min);
            if cap < 1.0 {
                caps.insert(*id, cap);
            }
        }
    }

    /// Every job first down to the cap its work does not feel (all alike, as far as needed), then
    /// jobs down to the floor in the share's order: the widest first (each size evenly) or the
    /// policy's lowest-ranked first (one by one).
    fn ranked_caps(
        &self,
        cluster: &ClusterState,
        figures: &PowerBudget,
        excess: &mut [f64],
        caps: &mut rustc_hash::FxHashMap<WorkloadId, f64>,
    ) {
        struct Running {
            id: WorkloadId,
            seq: u64,
            gpu_milli: u64,
            free_cap: f64,
            /// Board watts of the job's GPUs on each site.
            board: Vec<f64>,
            cap: f64,
        }
        let floor = self.budget.floor_cap();
        let sites = excess.len();
        let mut jobs: Vec<Running> = cluster
            .allocations()
            .filter(|(id, _)| !is_placeholder(**id))
            .map(|(id, p)| {
                let mut per_site = vec![(0.0f64, 0.0f64); sites];
                figures.add(&mut per_site, p);
                let free_cap =
                    p.members.iter().map(|m| figures.node(m.node).free_cap).fold(floor, f64::max).clamp(floor, 1.0);
                let gpu_milli = p.members.iter().flat_map(|m| &m.gpus).map(|g| u64::from(g.milli)).sum();
                Running {
                    id: *id,
                    seq: self.started_seq.get(id).copied().unwrap_or(0),
                    gpu_milli,
                    free_cap,
                    board: per_site.into_iter().map(|(_, b)| b).collect(),
                    cap: 1.0,
                }
            })
            .collect();
        // Jobs in one group are cut alike; groups in order until the sites fit. Ranks are
        // unique, so a ranked job is a group of its own; the unranked go by size.
        let ranked = self.budget.share() == CapShare::LowestRankFirst;
        let group = |j: &Running| -> (u32, std::cmp::Reverse<u64>) {
            let rank = if ranked { self.shed_rank.get(&j.id).copied().unwrap_or(u32::MAX) } else { 0 };
            (rank, std::cmp::Reverse(j.gpu_milli))
        };
        jobs.sort_unstable_by_key(|j| (group(j), j.seq, j.id));
        // Cuts jobs[range] from their caps toward `target(job)`, all by the same share of what
        // each could still give, as far as each site's excess needs.
        let cut = |jobs: &mut [Running], excess: &mut [f64], target: &dyn Fn(&Running) -> f64| {
            let mut givable = vec![0.0f64; sites];
            for j in jobs.iter() {
                for (g, b) in givable.iter_mut().zip(&j.board) {
                    *g += (j.cap - target(j)).max(0.0) * b;
                }
            }
            let share: Vec<f64> = excess
                .iter()
                .zip(&givable)
                .map(|(&e, &g)| if e <= 1e-9 || g <= 0.0 { 0.0 } else { (e / g).min(1.0) })
                .collect();
            for j in jobs.iter_mut() {
                let t = j.board.iter().zip(&share).filter(|(b, _)| **b > 0.0).map(|(_, &t)| t).fold(0.0, f64::max);
                if t <= 0.0 {
                    continue;
                }
                let new_cap = j.cap - t * (j.cap - target(j)).max(0.0);
                for (e, b) in excess.iter_mut().zip(&j.board) {
                    *e = (*e - (j.cap - new_cap) * b).max(0.0);
                }
                j.cap = new_cap;
            }
        };
        cut(&mut jobs, excess, &|j| j.free_cap);
        let mut start = 0;
        while start < jobs.len() && excess.iter().any(|&e| e > 1e-9) {
            let g = group(&jobs[start]);
            let end = start + jobs[start..].iter().take_while(|j| group(j) == g).count();
            cut(&mut jobs[start..end], excess, &|_| floor);
            start = end;
        }
        for j in jobs {
            if j.cap < 1.0 {
                caps.insert(j.id, j.cap);
            }
        }
    }

    /// Longest-running jobs first, each down to the floor before the next is touched.
    fn oldest_first_caps(
        &self,
        cluster: &ClusterState,
        figures: &PowerBudget,
        excess: &mut [f64],
        caps: &mut rustc_hash::FxHashMap<WorkloadId, f64>,
    ) {
        let floor = self.budget.floor_cap();
        let mut running: Vec<(u64, WorkloadId, &Placement)> = cluster
            .allocations()
            .filter(|(id, _)| !is_placeholder(**id))
            .map(|(id, p)| (self.started_seq.get(id).copied().unwrap_or(0), *id, p))
            .collect();
        running.sort_unstable_by_key(|&(seq, id, _)| (seq, id));
        for (_, id, p) in running {
            let mut per_site = vec![(0.0f64, 0.0f64); excess.len()];
            figures.add(&mut per_site, p);
            let mut cap = 1.0f64;
            for (s, &(_, board)) in per_site.iter().enumerate() {
                if board <= 0.0 || excess[s] <= 0.0 {
                    continue;
                }
                // This job's GPUs on site s give back (1 - c) * board watts at cap c.
                cap = cap.min((1.0 - excess[s] / board).max(floor));
            }
            if cap < 1.0 {
                for (s, &(_, board)) in per_site.iter().enumerate() {
                    excess[s] = (excess[s] - (1.0 - cap) * board).max(0.0);
                }
                caps.insert(id, cap);
            }
            if excess.iter().all(|&e| e <= 1e-9) {
                break;
            }
        }
    }
}

/// Any policy, held to a [`PowerBudget`].
pub struct PowerCapped<P> {
    pub inner: P,
    pub guard: PowerGuard,
    name: String,
}

impl<P: Policy> PowerCapped<P> {
    pub fn new(inner: P, budget: PowerBudget) -> Self {
        let mode = match budget.mode {
            PowerMode::Admission => "admission",
            PowerMode::Dynamic { .. } => "dynamic",
        };
        let name = format!("{}+power-{mode}", inner.name());
        PowerCapped { inner, guard: PowerGuard::new(budget), name }
    }
}

impl<P: Policy> Policy for PowerCapped<P> {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_clairvoyant(&self) -> bool {
        self.inner.is_clairvoyant()
    }

    fn schedule(&mut self, now: SimTime, queue: &Queue, cluster: &mut ClusterState) -> Vec<Decision> {
        // Nothing queued, nothing to start: no GPUs to hide.
        if !queue.is_empty() {
            self.guard.before(cluster);
        }
        let decisions = self.inner.schedule(now, queue, cluster);
        if self.guard.wants_shed_order() {
            self.guard.set_shed_order(self.inner.shed_order(now));
        }
        let kept = self.guard.after(cluster, decisions);
        for id in self.guard.take_undone() {
            if let (Some(job), Some(seq)) = (queue.get(id), queue.seq(id)) {
                self.inner.start_undone(job, seq, now);
            }
        }
        kept
    }

    fn start_undone(&mut self, job: &QueuedJob, seq: u64, now: SimTime) {
        self.inner.start_undone(job, seq, now);
    }

    fn on_finished(&mut self, workload: &Workload, started: SimTime, now: SimTime) {
        self.inner.on_finished(workload, started, now);
    }

    fn min_runtime(&self) -> SimDuration {
        self.inner.min_runtime()
    }

    fn shed_order(&self, now: SimTime) -> Vec<WorkloadId> {
        self.inner.shed_order(now)
    }
}
