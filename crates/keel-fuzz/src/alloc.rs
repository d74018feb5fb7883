//! What one decode allocates: a counting global allocator for the test binaries that link this
//! crate, and [`bounded`], which runs a decoder and fails the case if it allocated more than a
//! budget proportional to its input.
//!
//! The count is per thread (test threads run in parallel in one process) and covers the bytes
//! live at the peak of the call, the result included. A decoder that trusts a length prefix
//! (`vec![0; claimed_len]` before reading) shows up here as soon as the prefix claims more than
//! the budget, long before it would exhaust the machine's memory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::test_runner::TestCaseError;

/// The system allocator, counting what the current thread allocates while [`peak`] watches it.
pub struct Counting;

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(delta: isize) {
    let _ = WATCHING.try_with(|w| {
        if w.get() {
            let live = LIVE.with(|l| {
                l.set(l.get() + delta);
                l.get()
            });
            PEAK.with(|p| p.set(p.get().max(live)));
        }
    });
}

// SAFETY: every call goes to `System` unchanged; the counting touches only const-initialized
// thread-locals without destructors, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Run `f` and return its result with the most bytes it had allocated at once (on this thread).
pub fn peak<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    WATCHING.with(|w| w.set(true));
    let result = f();
    WATCHING.with(|w| w.set(false));
    (result, PEAK.with(|p| p.get()).max(0) as usize)
}

/// Bytes any decode may allocate whatever its input: room for serde's cautious preallocation of
/// a few sequences (1 MiB each, at most) and a reader's buffers.
pub const FIXED_BUDGET: usize = 4 << 20;

/// Bytes a decode may allocate per byte of input: a decoded value is larger than its encoding
/// (a one-byte empty `Vec` is 24 bytes), but by a constant factor.
pub const PER_INPUT_BYTE: usize = 64;

/// The budget of a decode of `input_len` bytes.
pub fn budget(input_len: usize) -> usize {
    FIXED_BUDGET + PER_INPUT_BYTE * input_len
}

/// Run the decoder `f` on an input of `input_len` bytes: an error if it panicked or allocated
/// more than [`budget`]`(input_len)` at once.
pub fn bounded<R>(what: &str, input_len: usize, f: impl FnOnce() -> R) -> Result<R, TestCaseError> {
    let (result, bytes) = peak(|| crate::no_panic(what, f));
    let result = result?;
    let limit = budget(input_len);
    if bytes > limit {
        return Err(TestCaseError::fail(format!(
            "{what} allocated {bytes} bytes for {input_len} bytes of input (budget {limit})"
        )));
    }
    Ok(result)
}
