//! The disk reserve: produce stops while the data dir's filesystem has less
//! than `storage.min_free_bytes` free, so what is left is there for what
//! must always work on a full disk: DeleteTopics, DeleteRecords, retention
//! and compaction, and the metadata writes they make. Free space has no
//! change notification, so a task samples it (`statvfs`) ten times a second,
//! and produce counts what it admits between samples ([`DiskReserve`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Bytes free for an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    // SAFETY: statvfs writes only the struct passed, and c_path outlives the call.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// What produce may still write: the last sample of free space, less what
/// produce has admitted since (twice its bytes, for LMDB's pages and
/// indexes), so a burst between samples cannot run past the reserve.
pub struct DiskReserve {
    min_free: u64,
    free_at_sample: AtomicU64,
    admitted_since: AtomicU64,
    short: AtomicBool,
}

impl DiskReserve {
    /// `min_free` 0: no reserve, everything is admitted.
    pub fn new(min_free: u64) -> Arc<DiskReserve> {
        Arc::new(DiskReserve {
            min_free,
            free_at_sample: AtomicU64::new(u64::MAX),
            admitted_since: AtomicU64::new(0),
            short: AtomicBool::new(false),
        })
    }

    /// Whether `bytes` more of produce keep the reserve; counts them if so.
    pub fn admit(&self, bytes: u64) -> bool {
        if self.min_free == 0 {
            return true;
        }
        let cost = bytes.saturating_mul(2);
        let free = self.free_at_sample.load(Ordering::Relaxed);
        let admitted = self.admitted_since.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |admitted| {
            let after = admitted.saturating_add(cost);
            (free.saturating_sub(after) >= self.min_free).then_some(after)
        });
        if admitted.is_err() {
            self.short.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Samples the free space under `data_dir` until the system stops; logs
    /// each change between short and not.
    pub fn watch(self: &Arc<Self>, data_dir: PathBuf) {
        if self.min_free == 0 {
            return;
        }
        let reserve = self.clone();
        actix::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut was_short = false;
            // Bounded by the system: it ends when the broker stops.
            loop {
                tick.tick().await;
                let free = match free_bytes(&data_dir) {
                    Ok(free) => free,
                    Err(e) => {
                        tracing::warn!(dir = %data_dir.display(), error = %e, "cannot read the free space");
                        continue;
                    }
                };
                reserve.free_at_sample.store(free, Ordering::Relaxed);
                reserve.admitted_since.store(0, Ordering::Relaxed);
                let short = free < reserve.min_free || reserve.short.swap(false, Ordering::Relaxed);
                if short != was_short {
                    let min_free = reserve.min_free;
                    if short {
                        tracing::error!(free, min_free, dir = %data_dir.display(),
                            "disk nearly full: produce is refused until storage.min_free_bytes are free; deletes and retention go on");
                    } else {
                        tracing::info!(free, min_free, "disk has room again: produce resumes");
                    }
                    was_short = short;
                }
            }
        });
    }
}
