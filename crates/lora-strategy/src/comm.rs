//! The collectives a strategy needs, over MPI or over threads of one process.
//!
//! [`Comm`] is the small set of collectives the strategies use; `mpi_comm`
//! implements it on an MPI communicator, [`ThreadComm`] on threads that share
//! memory (the strategies' tests run N ranks in one process with it, and a
//! one-process run is a group of one). [`Meter`] wraps a communicator and
//! counts what each call sends and how long it takes.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::{Error, Result};

pub trait Comm: Send {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Sums `buf` over the ranks, in place; every rank gets the same values.
    fn all_reduce_f32(&mut self, buf: &mut [f32]) -> Result<()>;
    fn all_reduce_f64(&mut self, buf: &mut [f64]) -> Result<()>;
    /// Every rank's `mine` (all the same length), in rank order.
    fn all_gather_u8(&mut self, mine: &[u8], all: &mut [u8]) -> Result<()>;
    /// `all` is `size` blocks of `mine.len()`: block `r` of the sum goes to rank `r`.
    fn reduce_scatter_f32(&mut self, all: &[f32], mine: &mut [f32]) -> Result<()>;
    /// Every rank's `mine` (all the same length), in rank order.
    fn all_gather_f32(&mut self, mine: &[f32], all: &mut [f32]) -> Result<()>;
    /// The sum of `buf` over the ranks, into rank 0's `buf` (the others' are unchanged).
    fn reduce_f32(&mut self, buf: &mut [f32]) -> Result<()>;
    /// Rank 0's `buf` to every rank.
    fn broadcast_f32(&mut self, buf: &mut [f32]) -> Result<()>;
    /// The ranks with the same `colour`, ordered by rank, as a new communicator.
    fn split(&mut self, colour: u32) -> Result<Box<dyn Comm>>;
    /// The ranks that share memory with this one (one node), as a new communicator.
    fn split_node(&mut self) -> Result<Box<dyn Comm>>;
    /// How long a collective may wait for the other ranks before it fails
    /// with [`Error::Timeout`] (communicators split from this one inherit it).
    /// After a timeout the communicator is unusable: the job is to be aborted.
    fn set_timeout(&mut self, timeout: Duration);
}

/// Test hook (fault injection, used by the tests only): `RANK:N` makes rank
/// RANK stall (sleep for an hour) before its N-th metered collective (from 1),
/// as a rank stuck in its own work would.
pub const STALL_ENV: &str = "LORA_TEST_STALL_COLLECTIVE";

/// Bytes one rank sends in the ring algorithms, for `n` bytes of payload:
/// an all-reduce sends `2 (p-1)/p n`, a reduce-scatter or an all-gather of `n`
/// in all `(p-1)/p n`. These are the figures for the bandwidth-optimal
/// algorithms, the ones that matter at scale, whatever MPI picked here.
pub fn ring_bytes(kind: Collective, n: usize, p: usize) -> f64 {
    let share = (p.saturating_sub(1)) as f64 / p.max(1) as f64 * n as f64;
    match kind {
        Collective::AllReduce => 2.0 * share,
        Collective::ReduceScatter | Collective::AllGather | Collective::Reduce | Collective::Broadcast => share,
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Collective {
    AllReduce,
    ReduceScatter,
    AllGather,
    Reduce,
    Broadcast,
}

/// A communicator that counts bytes sent and seconds spent in collectives.
pub struct Meter {
    comm: Box<dyn Comm>,
    /// Since the last [`Meter::take`].
    bytes: f64,
    seconds: f64,
    /// Collectives started so far, and the one before which this rank stalls ([`STALL_ENV`]).
    calls: u64,
    stall_before: Option<u64>,
}

impl Meter {
    pub fn new(comm: Box<dyn Comm>) -> Self {
        let rank = comm.rank();
        let stall_before = std::env::var(STALL_ENV).ok().and_then(|v| {
            let (r, n) = v.split_once(':')?;
            (r.trim().parse::<usize>().ok()? == rank).then(|| n.trim().parse().ok())?
        });
        Self {
            comm,
            bytes: 0.0,
            seconds: 0.0,
            calls: 0,
            stall_before,
        }
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn size(&self) -> usize {
        self.comm.size()
    }

    /// Bytes sent and seconds spent since the last call.
    pub fn take(&mut self) -> (f64, f64) {
        let out = (self.bytes, self.seconds);
        (self.bytes, self.seconds) = (0.0, 0.0);
        out
    }

    fn timed<T>(&mut self, kind: Collective, bytes: usize, f: impl FnOnce(&mut dyn Comm) -> Result<T>) -> Result<T> {
        self.calls += 1;
        if self.stall_before == Some(self.calls) {
            std::thread::sleep(Duration::from_secs(3600));
        }
        let t = Instant::now();
        let out = f(self.comm.as_mut())?;
        self.seconds += t.elapsed().as_secs_f64();
        self.bytes += ring_bytes(kind, bytes, self.comm.size());
        Ok(out)
    }

    pub fn all_reduce_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        self.timed(Collective::AllReduce, buf.len() * 4, |c| c.all_reduce_f32(buf))
    }

    pub fn all_reduce_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        self.timed(Collective::AllReduce, buf.len() * 8, |c| c.all_reduce_f64(buf))
    }

    pub fn all_gather_u8(&mut self, mine: &[u8]) -> Result<Vec<u8>> {
        let mut all = vec![0; mine.len() * self.size()];
        if self.size() == 1 {
            all.copy_from_slice(mine);
            return Ok(all);
        }
        let n = all.len();
        self.timed(Collective::AllGather, n, |c| c.all_gather_u8(mine, &mut all))?;
        Ok(all)
    }

    /// Every rank's `mine` (any lengths), in rank order: the lengths first,
    /// then the parts padded to the longest. For checkpoints, not the steps'
    /// traffic: not counted in the figures.
    pub fn gather_bytes(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        if self.size() == 1 {
            return Ok(vec![mine.to_vec()]);
        }
        let counted = (self.bytes, self.seconds);
        let lens = self.all_gather_u8(&(mine.len() as u64).to_le_bytes())?;
        let lens: Vec<usize> = lens
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as usize)
            .collect();
        let longest = lens.iter().copied().max().unwrap_or(0);
        let mut padded = mine.to_vec();
        padded.resize(longest, 0);
        let all = self.all_gather_u8(&padded)?;
        (self.bytes, self.seconds) = counted;
        Ok(lens
            .iter()
            .enumerate()
            .map(|(r, &n)| all[r * longest..r * longest + n].to_vec())
            .collect())
    }

    pub fn all_gather_f32(&mut self, mine: &[f32], all: &mut [f32]) -> Result<()> {
        if self.size() == 1 {
            all.copy_from_slice(mine);
            return Ok(());
        }
        self.timed(Collective::AllGather, all.len() * 4, |c| c.all_gather_f32(mine, all))
    }

    pub fn reduce_scatter_f32(&mut self, all: &[f32], mine: &mut [f32]) -> Result<()> {
        if self.size() == 1 {
            mine.copy_from_slice(all);
            return Ok(());
        }
        self.timed(Collective::ReduceScatter, all.len() * 4, |c| {
            c.reduce_scatter_f32(all, mine)
        })
    }

    pub fn reduce_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        self.timed(Collective::Reduce, buf.len() * 4, |c| c.reduce_f32(buf))
    }

    pub fn broadcast_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        self.timed(Collective::Broadcast, buf.len() * 4, |c| c.broadcast_f32(buf))
    }

    pub fn split(&mut self, colour: u32) -> Result<Box<dyn Comm>> {
        self.comm.split(colour)
    }

    pub fn split_node(&mut self) -> Result<Box<dyn Comm>> {
        self.comm.split_node()
    }
}

/// A barrier whose wait gives up after a timeout (`std::sync::Barrier` cannot).
struct TimedBarrier {
    size: usize,
    /// Ranks arrived in this generation, and the generation.
    state: Mutex<(usize, u64)>,
    all_here: Condvar,
}

impl TimedBarrier {
    fn new(size: usize) -> Self {
        Self {
            size,
            state: Mutex::new((0, 0)),
            all_here: Condvar::new(),
        }
    }

    /// False when the others did not all arrive within `timeout`.
    fn wait(&self, timeout: Duration) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let generation = state.1;
        state.0 += 1;
        if state.0 == self.size {
            *state = (0, generation + 1);
            self.all_here.notify_all();
            return true;
        }
        let (state, _) = self
            .all_here
            .wait_timeout_while(state, timeout, |s| s.1 == generation)
            .unwrap_or_else(|e| e.into_inner());
        state.1 != generation
    }
}

/// What the ranks of a [`ThreadComm`] group share.
struct Group {
    size: usize,
    barrier: TimedBarrier,
    slots: Mutex<Vec<Vec<u8>>>,
    /// Groups made by `split`, by (split number, colour).
    children: Mutex<HashMap<(u64, u32), Arc<Group>>>,
}

impl Group {
    fn new(size: usize) -> Arc<Self> {
        Arc::new(Self {
            size,
            barrier: TimedBarrier::new(size),
            slots: Mutex::new(vec![Vec::new(); size]),
            children: Mutex::new(HashMap::new()),
        })
    }
}

/// Ranks that are threads of one process: each collective is an exchange
/// through shared slots between two barriers, sums taken in rank order.
pub struct ThreadComm {
    group: Arc<Group>,
    rank: usize,
    splits: u64,
    /// The node each rank of this group is on, for [`Comm::split_node`].
    nodes: Arc<Vec<u32>>,
    timeout: Duration,
}

impl ThreadComm {
    /// `size` ranks on one node.
    pub fn group(size: usize) -> Vec<ThreadComm> {
        Self::on_nodes(vec![0; size])
    }

    /// One rank per entry of `nodes`, on the node it names (simulated nodes).
    pub fn on_nodes(nodes: Vec<u32>) -> Vec<ThreadComm> {
        let group = Group::new(nodes.len());
        let nodes = Arc::new(nodes);
        (0..group.size)
            .map(|rank| ThreadComm {
                group: group.clone(),
                rank,
                splits: 0,
                nodes: nodes.clone(),
                timeout: Duration::from_secs_f64(crate::DEFAULT_COLLECTIVE_TIMEOUT_S),
            })
            .collect()
    }

    fn wait(&self, collective: &'static str, bytes: usize) -> Result<()> {
        if self.group.barrier.wait(self.timeout) {
            Ok(())
        } else {
            Err(Error::Timeout {
                collective,
                bytes,
                seconds: self.timeout.as_secs_f64(),
                rank: self.rank,
                size: self.group.size,
            })
        }
    }

    /// Every rank's bytes, in rank order.
    fn exchange(&self, collective: &'static str, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.group.slots.lock().unwrap_or_else(|e| e.into_inner())[self.rank] = mine.to_vec();
        self.wait(collective, mine.len())?;
        let all = self.group.slots.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Nobody writes the slots again before everyone has read them.
        self.wait(collective, mine.len())?;
        Ok(all)
    }

    fn exchange_f32(&self, collective: &'static str, mine: &[f32]) -> Result<Vec<Vec<f32>>> {
        let bytes: Vec<u8> = mine.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(self
            .exchange(collective, &bytes)?
            .into_iter()
            .map(|b| {
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect()
            })
            .collect())
    }
}

impl Comm for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.group.size
    }

    fn all_reduce_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        let all = self.exchange_f32("all-reduce", buf)?;
        buf.fill(0.0);
        for part in all {
            for (b, v) in buf.iter_mut().zip(part) {
                *b += v;
            }
        }
        Ok(())
    }

    fn all_reduce_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        let bytes: Vec<u8> = buf.iter().flat_map(|v| v.to_le_bytes()).collect();
        let all = self.exchange("all-reduce", &bytes)?;
        buf.fill(0.0);
        for part in all {
            for (b, c) in buf.iter_mut().zip(part.chunks_exact(8)) {
                *b += f64::from_le_bytes(c.try_into().expect("8 bytes"));
            }
        }
        Ok(())
    }

    fn all_gather_u8(&mut self, mine: &[u8], all: &mut [u8]) -> Result<()> {
        let parts = self.exchange("all-gather", mine)?;
        for (chunk, part) in all.chunks_mut(mine.len().max(1)).zip(parts) {
            if part.len() != chunk.len() {
                return Err(Error::Comm(format!(
                    "all-gather of unequal parts ({} and {} bytes)",
                    part.len(),
                    chunk.len()
                )));
            }
            chunk.copy_from_slice(&part);
        }
        Ok(())
    }

    fn reduce_scatter_f32(&mut self, all: &[f32], mine: &mut [f32]) -> Result<()> {
        let parts = self.exchange_f32("reduce-scatter", all)?;
        let n = mine.len();
        mine.fill(0.0);
        for part in parts {
            for (m, v) in mine.iter_mut().zip(&part[self.rank * n..(self.rank + 1) * n]) {
                *m += v;
            }
        }
        Ok(())
    }

    fn all_gather_f32(&mut self, mine: &[f32], all: &mut [f32]) -> Result<()> {
        let parts = self.exchange_f32("all-gather", mine)?;
        for (chunk, part) in all.chunks_mut(mine.len().max(1)).zip(parts) {
            chunk.copy_from_slice(&part);
        }
        Ok(())
    }

    fn reduce_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        let parts = self.exchange_f32("reduce", buf)?;
        if self.rank == 0 {
            buf.fill(0.0);
            for part in parts {
                for (b, v) in buf.iter_mut().zip(part) {
                    *b += v;
                }
            }
        }
        Ok(())
    }

    fn broadcast_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        let parts = self.exchange_f32("broadcast", buf)?;
        buf.copy_from_slice(&parts[0]);
        Ok(())
    }

    fn split(&mut self, colour: u32) -> Result<Box<dyn Comm>> {
        let colours: Vec<u32> = self
            .exchange("split", &colour.to_le_bytes())?
            .into_iter()
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        let members: Vec<usize> = (0..self.size()).filter(|&r| colours[r] == colour).collect();
        let rank = members
            .iter()
            .position(|&r| r == self.rank)
            .expect("a member of its colour");
        let key = (self.splits, colour);
        self.splits += 1;
        let group = self
            .group
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert_with(|| Group::new(members.len()))
            .clone();
        let nodes = Arc::new(members.iter().map(|&r| self.nodes[r]).collect());
        Ok(Box::new(ThreadComm {
            group,
            rank,
            splits: 0,
            nodes,
            timeout: self.timeout,
        }))
    }

    fn split_node(&mut self) -> Result<Box<dyn Comm>> {
        let node = self.nodes[self.rank];
        self.split(node)
    }

    fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on each rank of a thread group and returns the answers in rank order.
    pub fn on_ranks<T: Send>(comms: Vec<ThreadComm>, f: impl Fn(ThreadComm) -> T + Sync) -> Vec<T> {
        std::thread::scope(|s| {
            let handles: Vec<_> = comms.into_iter().map(|c| s.spawn(|| f(c))).collect();
            handles.into_iter().map(|h| h.join().expect("rank panicked")).collect()
        })
    }

    #[test]
    fn collectives_of_three_ranks_match_hand_sums() {
        let out = on_ranks(ThreadComm::group(3), |mut c| {
            let r = c.rank() as f32;
            let mut a = vec![r, 10.0 * r];
            c.all_reduce_f32(&mut a).unwrap();
            let mut rs = [0.0f32; 1];
            c.reduce_scatter_f32(&[1.0 + r, 2.0 + r, 3.0 + r], &mut rs).unwrap();
            let mut g = [0.0f32; 3];
            c.all_gather_f32(&[r], &mut g).unwrap();
            let mut red = vec![r + 1.0];
            c.reduce_f32(&mut red).unwrap();
            let mut b = vec![r + 5.0];
            c.broadcast_f32(&mut b).unwrap();
            (a, rs[0], g, red[0], b[0])
        });
        for (rank, (a, rs, g, red, b)) in out.into_iter().enumerate() {
            assert_eq!(a, vec![3.0, 30.0]);
            // Block r of the sum: (r + 1) * 3 + (0 + 1 + 2).
            assert_eq!(rs, (rank as f32 + 1.0) * 3.0 + 3.0);
            assert_eq!(g, [0.0, 1.0, 2.0]);
            assert_eq!(red, if rank == 0 { 6.0 } else { rank as f32 + 1.0 });
            assert_eq!(b, 5.0);
        }
    }

    #[test]
    fn a_split_groups_the_ranks_of_a_node_in_rank_order() {
        let out = on_ranks(ThreadComm::on_nodes(vec![0, 0, 1, 1]), |mut c| {
            let mut node = c.split_node().unwrap();
            let mut v = [c.rank() as f32];
            node.all_reduce_f32(&mut v).unwrap();
            (node.rank(), node.size(), v[0])
        });
        assert_eq!(out, vec![(0, 2, 1.0), (1, 2, 1.0), (0, 2, 5.0), (1, 2, 5.0)]);
    }

    #[test]
    fn ring_figures() {
        assert_eq!(ring_bytes(Collective::AllReduce, 100, 2), 100.0);
        assert_eq!(ring_bytes(Collective::AllGather, 100, 4), 75.0);
        assert_eq!(ring_bytes(Collective::AllReduce, 100, 1), 0.0);
    }
}
