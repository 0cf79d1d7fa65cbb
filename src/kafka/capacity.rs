//! How many partition replicas a broker takes, checked before any topic or
//! partition is created (CreateTopics, CreatePartitions, auto-creation), so
//! a request that asks for more than the brokers can open is refused whole
//! instead of answered and then failing partition by partition.
//!
//! A partition's LMDB environment holds file descriptors (its data and lock
//! files), so the cap is the configured `limits.max_partitions_per_broker`,
//! lowered to what the process's descriptor limit leaves after client
//! connections. The broker raises its soft descriptor limit to the hard one
//! at start (`raise_fd_limit`).

use kafka_protocol::ResponseError;

use super::RequestContext;
use crate::config::LimitsSection;

/// Descriptors one partition's LMDB environment holds (data, lock, and one spare).
const FDS_PER_PARTITION: u64 = 3;
/// Descriptors kept for everything else: Raft and group stores, listeners, logs.
const FDS_RESERVED: u64 = 128;

/// The process's limit on open files, if it can be read.
fn nofile() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct passed.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit)
}

/// Raises the soft limit on open files to the hard limit; returns the soft
/// limit in force afterwards (the old one if raising failed).
pub fn raise_fd_limit() -> u64 {
    let Some(limit) = nofile() else { return 1024 };
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads the struct passed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return limit.rlim_max;
        }
    }
    limit.rlim_cur
}

/// The soft limit on open files now.
pub fn fd_limit() -> u64 {
    nofile().map_or(1024, |limit| limit.rlim_cur)
}

/// Partition replicas one broker takes: the configured cap, or fewer if the
/// descriptor limit `fds` (after `max_connections`, at most half of it) leaves less.
pub fn partition_cap(limits: &LimitsSection, fds: u64) -> usize {
    let connections = (limits.max_connections as u64).min(fds / 2);
    let by_fds = fds.saturating_sub(connections + FDS_RESERVED) / FDS_PER_PARTITION;
    let cap = (limits.max_partitions_per_broker as u64).min(by_fds);
    usize::try_from(cap).unwrap_or(usize::MAX)
}

/// Whether `new_replicas` more partition replicas fit in the cluster, as
/// this broker's metadata has it: at most the cap per live broker.
/// POLICY_VIOLATION with a message naming the limit otherwise.
pub fn admit(ctx: &RequestContext, new_replicas: usize) -> Result<(), (i16, String)> {
    let metadata = ctx.cluster.metadata();
    let hosted: usize = metadata.topics.values().flat_map(|t| t.partitions.iter()).map(|p| p.replicas.len()).sum();
    let live = metadata.live_brokers().count().max(1);
    let room = ctx.partition_cap.saturating_mul(live);
    if hosted.saturating_add(new_replicas) <= room {
        return Ok(());
    }
    let why = format!(
        "{new_replicas} more partition replicas would make {}; {live} broker(s) take at most {} each \
         (limits.max_partitions_per_broker {}, lowered to what the open-file limit allows)",
        hosted + new_replicas,
        ctx.partition_cap,
        ctx.config.limits.max_partitions_per_broker
    );
    Err((ResponseError::PolicyViolation.code(), why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_follows_the_descriptor_limit() {
        let mut limits = crate::config::BrokerConfig::load(None).unwrap().limits;
        limits.max_partitions_per_broker = 10_000;
        limits.max_connections = 1024;
        assert_eq!(partition_cap(&limits, 1 << 20), 10_000);
        assert_eq!(partition_cap(&limits, 1024), (1024 - 512 - 128) / 3);
        assert_eq!(partition_cap(&limits, 100), 0);
    }
}
