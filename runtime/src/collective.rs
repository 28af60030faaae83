//! In-process collectives for the CPU executor: the ranks of a tensor-parallel group run as threads,
//! and the emitted code calls these `extern "C"` symbols (registered with the JIT) on raw buffers.
//! A thread with no communicator behaves as a group of one (every collective is the identity).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Barrier, Mutex};

/// A communicator shared by the threads of one group.
pub struct Comm {
    size: usize,
    barrier: Barrier,
    slots: Mutex<Vec<Vec<f32>>>,
}

impl Comm {
    /// A communicator for `size` ranks.
    pub fn new(size: usize) -> Arc<Comm> {
        Arc::new(Comm {
            size,
            barrier: Barrier::new(size.max(1)),
            slots: Mutex::new(vec![Vec::new(); size]),
        })
    }

    /// Ranks in the group.
    pub fn size(&self) -> usize {
        self.size
    }
}

struct RankCtx {
    comm: Option<Arc<Comm>>,
    rank: usize,
    error: Option<String>,
}

thread_local! {
    static CTX: RefCell<RankCtx> = const { RefCell::new(RankCtx { comm: None, rank: 0, error: None }) };
}

/// Messages in flight, by (destination rank, tag).
type Mailbox = HashMap<(usize, i64), Vec<f32>>;
static MAILBOX: Mutex<Option<Mailbox>> = Mutex::new(None);

/// Binds this thread to `rank` of `comm` (None: a group of one).
pub fn bind(comm: Option<Arc<Comm>>, rank: usize) {
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        c.comm = comm;
        c.rank = rank;
        c.error = None;
    });
}

/// Takes the first error a collective recorded on this thread since the last call.
pub fn take_error() -> Option<String> {
    CTX.with(|c| c.borrow_mut().error.take())
}

fn fail(msg: String) {
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.error.is_none() {
            c.error = Some(msg);
        }
    });
}

fn ctx() -> (Option<Arc<Comm>>, usize) {
    CTX.with(|c| {
        let c = c.borrow();
        (c.comm.clone(), c.rank)
    })
}

/// Checks the group size the program was emitted for against the bound communicator.
fn group(expected: i64) -> Option<(Arc<Comm>, usize)> {
    let (comm, rank) = ctx();
    match comm {
        None if expected <= 1 => None,
        None => {
            fail(format!(
                "collective for a group of {expected} ranks run without a communicator"
            ));
            None
        }
        Some(c) if c.size as i64 != expected => {
            fail(format!(
                "collective for a group of {expected} ranks run in a group of {}",
                c.size
            ));
            None
        }
        Some(c) if c.size == 1 => None,
        Some(c) => Some((c, rank)),
    }
}

unsafe fn slice<'a>(ptr: i64, n: i64) -> &'a mut [f32] {
    if n <= 0 || ptr == 0 {
        return &mut [];
    }
    // SAFETY: the emitted code passes the aligned base address of a live buffer of `n` f32.
    unsafe { std::slice::from_raw_parts_mut(ptr as usize as *mut f32, n as usize) }
}

/// `moai_allreduce_f32(ptr, count, group_size)`: in-place sum across the group.
pub extern "C" fn moai_allreduce_f32(ptr: i64, n: i64, group_size: i64) {
    let Some((c, rank)) = group(group_size) else {
        return;
    };
    let buf = unsafe { slice(ptr, n) };
    if let Ok(mut s) = c.slots.lock() {
        s[rank] = buf.to_vec();
    }
    c.barrier.wait();
    if let Ok(s) = c.slots.lock() {
        for (i, x) in buf.iter_mut().enumerate() {
            // sum in rank order so every rank gets bit-identical results
            *x = s.iter().map(|v| v.get(i).copied().unwrap_or(0.0)).sum();
        }
    }
    c.barrier.wait();
}

/// `moai_allgather_f32(in, out, outer, inner, group_size)`: concatenates each rank's `[outer, inner]`
/// block along the inner axis into `[outer, size·inner]`.
pub extern "C" fn moai_allgather_f32(inp: i64, out: i64, outer: i64, inner: i64, group_size: i64) {
    let src = unsafe { slice(inp, outer * inner) };
    let Some((c, rank)) = group(group_size) else {
        let dst = unsafe { slice(out, outer * inner) };
        dst.copy_from_slice(src);
        return;
    };
    let size = c.size as i64;
    let dst = unsafe { slice(out, outer * inner * size) };
    if let Ok(mut s) = c.slots.lock() {
        s[rank] = src.to_vec();
    }
    c.barrier.wait();
    if let Ok(s) = c.slots.lock() {
        let (o_n, i_n) = (outer as usize, inner as usize);
        for o in 0..o_n {
            for (r, v) in s.iter().enumerate() {
                let d0 = (o * c.size + r) * i_n;
                dst[d0..d0 + i_n].copy_from_slice(&v[o * i_n..(o + 1) * i_n]);
            }
        }
    }
    c.barrier.wait();
}

/// `moai_reducescatter_f32(in, out, outer, inner_out, group_size)`: sums `[outer, size·inner_out]`
/// across ranks and keeps this rank's `[outer, inner_out]` block.
pub extern "C" fn moai_reducescatter_f32(
    inp: i64,
    out: i64,
    outer: i64,
    inner_out: i64,
    group_size: i64,
) {
    let dst = unsafe { slice(out, outer * inner_out) };
    let Some((c, rank)) = group(group_size) else {
        let src = unsafe { slice(inp, outer * inner_out) };
        dst.copy_from_slice(src);
        return;
    };
    let size = c.size as i64;
    let src = unsafe { slice(inp, outer * inner_out * size) };
    if let Ok(mut s) = c.slots.lock() {
        s[rank] = src.to_vec();
    }
    c.barrier.wait();
    if let Ok(s) = c.slots.lock() {
        let (o_n, i_n) = (outer as usize, inner_out as usize);
        for o in 0..o_n {
            for i in 0..i_n {
                let at = (o * c.size + rank) * i_n + i;
                dst[o * i_n + i] = s.iter().map(|v| v[at]).sum();
            }
        }
    }
    c.barrier.wait();
}

/// `moai_send_f32(ptr, count, tag)`: posts a copy for the next stage's matching receive.
pub extern "C" fn moai_send_f32(ptr: i64, n: i64, tag: i64) {
    let (_, rank) = ctx();
    let v = unsafe { slice(ptr, n) }.to_vec();
    if let Ok(mut m) = MAILBOX.lock() {
        m.get_or_insert_with(HashMap::new).insert((rank, tag), v);
    }
}

/// `moai_recv_f32(ptr, count, tag)`: takes the matching send (same rank and tag).
pub extern "C" fn moai_recv_f32(ptr: i64, n: i64, tag: i64) {
    let (_, rank) = ctx();
    let dst = unsafe { slice(ptr, n) };
    let got = MAILBOX
        .lock()
        .ok()
        .and_then(|mut m| m.get_or_insert_with(HashMap::new).remove(&(rank, tag)));
    match got {
        Some(v) if v.len() == dst.len() => dst.copy_from_slice(&v),
        Some(v) => fail(format!(
            "recv tag {tag}: {} elements sent, {} expected",
            v.len(),
            dst.len()
        )),
        None => fail(format!("recv tag {tag} on rank {rank}: nothing was sent")),
    }
}

/// The symbols to register with a JIT, by name.
pub fn symbols() -> [(&'static str, *mut ()); 6] {
    [
        ("memrefCopy", memref_copy as *mut ()),
        ("moai_allreduce_f32", moai_allreduce_f32 as *mut ()),
        ("moai_allgather_f32", moai_allgather_f32 as *mut ()),
        ("moai_reducescatter_f32", moai_reducescatter_f32 as *mut ()),
        ("moai_send_f32", moai_send_f32 as *mut ()),
        ("moai_recv_f32", moai_recv_f32 as *mut ()),
    ]
}

/// `memrefCopy(elem_size, src, dst)`: the strided copy MLIR's memref lowering calls for copies of
/// non-contiguous memrefs (normally provided by `libmlir_c_runner_utils`). Arguments are unranked memref
/// descriptors `{rank, *descriptor}` with descriptor `{allocated, aligned, offset, sizes[rank], strides[rank]}`.
///
/// # Safety
/// Called only by JIT-compiled code with valid descriptors of equal shape.
pub unsafe extern "C" fn memref_copy(
    elem_size: i64,
    src: *const UnrankedDesc,
    dst: *const UnrankedDesc,
) {
    unsafe {
        let (s, d) = (&*src, &*dst);
        let rank = s.rank.max(0) as usize;
        let sd = s.desc as *const i64;
        let dd = d.desc as *const i64;
        let s_base = *(sd.add(1)) as *const u8;
        let d_base = *(dd.add(1)) as *mut u8;
        let (s_off, d_off) = (*sd.add(2), *dd.add(2));
        let sizes: Vec<i64> = (0..rank).map(|i| *sd.add(3 + i)).collect();
        let s_str: Vec<i64> = (0..rank).map(|i| *sd.add(3 + rank + i)).collect();
        let d_str: Vec<i64> = (0..rank).map(|i| *dd.add(3 + rank + i)).collect();
        if sizes.iter().any(|x| *x <= 0) {
            return;
        }
        let es = elem_size as usize;
        let mut idx = vec![0i64; rank];
        loop {
            let so: i64 = s_off + idx.iter().zip(&s_str).map(|(i, s)| i * s).sum::<i64>();
            let doff: i64 = d_off + idx.iter().zip(&d_str).map(|(i, s)| i * s).sum::<i64>();
            std::ptr::copy_nonoverlapping(
                s_base.add(so as usize * es),
                d_base.add(doff as usize * es),
                es,
            );
            let mut k = rank;
            loop {
                if k == 0 {
                    return;
                }
                k -= 1;
                idx[k] += 1;
                if idx[k] < sizes[k] {
                    break;
                }
                idx[k] = 0;
            }
        }
    }
}

/// An unranked memref as passed by value-pointer to runtime functions.
#[repr(C)]
pub struct UnrankedDesc {
    /// Rank.
    pub rank: i64,
    /// Pointer to the ranked descriptor.
    pub desc: *const u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allreduce_sums_across_threads() {
        let comm = Comm::new(2);
        let out: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|r| {
                    let comm = comm.clone();
                    s.spawn(move || {
                        bind(Some(comm), r);
                        let mut v = vec![r as f32 + 1.0, 10.0 * (r as f32 + 1.0)];
                        moai_allreduce_f32(v.as_mut_ptr() as i64, 2, 2);
                        assert!(take_error().is_none());
                        v
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(out[0], vec![3.0, 30.0]);
        assert_eq!(out[1], vec![3.0, 30.0]);
    }

    #[test]
    fn mismatched_group_is_reported() {
        bind(None, 0);
        let mut v = vec![1.0f32];
        moai_allreduce_f32(v.as_mut_ptr() as i64, 1, 2);
        assert!(take_error().unwrap().contains("group of 2"));
    }
}
