//! DescribeLogDirs: the data directory, each partition's stored bytes, and
//! (v4) the filesystem's size and free space.

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse};
use tributary_actors::PartitionSize;

use super::{str_bytes, topic_name, RequestContext};

pub async fn handle(ctx: &RequestContext, req: DescribeLogDirsRequest, version: i16) -> DescribeLogDirsResponse {
    let snapshot = ctx.broker.metadata();
    // Null asks for every partition.
    let wanted: Vec<(String, Vec<i32>)> = match req.topics {
        Some(topics) => topics.into_iter().map(|t| (t.topic.0.to_string(), t.partitions)).collect(),
        None => {
            snapshot.topics.values().map(|t| (t.name.to_string(), (0..t.partitions.len() as i32).collect())).collect()
        }
    };
    let mut topics = Vec::new();
    for (name, indexes) in wanted {
        let mut partitions = Vec::new();
        for index in indexes {
            let Some(handle) = snapshot.partition(&name, index) else { continue };
            if let Ok(Ok(size)) = handle.addr.send(PartitionSize).await {
                partitions.push(
                    DescribeLogDirsPartition::default().with_partition_index(index).with_partition_size(size as i64),
                );
            }
        }
        if !partitions.is_empty() {
            topics.push(DescribeLogDirsTopic::default().with_name(topic_name(&name)).with_partitions(partitions));
        }
    }
    let dir = &ctx.config.broker.data_dir;
    let dir_name = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone()).display().to_string();
    let mut result = DescribeLogDirsResult::default().with_log_dir(str_bytes(dir_name)).with_topics(topics);
    if version >= 4 {
        let (total, usable) = filesystem_bytes(dir).unwrap_or((-1, -1));
        result = result.with_total_bytes(total).with_usable_bytes(usable);
    }
    DescribeLogDirsResponse::default().with_results(vec![result])
}

/// (total, available) bytes of the filesystem holding `dir`.
fn filesystem_bytes(dir: &std::path::Path) -> Option<(i64, i64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // Safety: `path` is a valid C string and `stat` a writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as i64;
    Some((stat.f_blocks as i64 * block, stat.f_bavail as i64 * block))
}

super::registry::api! {
    DescribeLogDirs: DescribeLogDirsRequest => DescribeLogDirsResponse, versions 1..=4, access Cluster Describe,
    |call, request| handle(&call.ctx, request, call.version).await
}
