//! Tributary's actors inside your own actix application: no socket, no broker process.
//!
//! Run with: `cargo run -p tributary-actors --example embedded`

use std::collections::BTreeMap;

use tributary_actors::{Broker, NewRecord, OffsetQuery, StorageConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data_dir = std::env::temp_dir().join(format!("tributary-embedded-{}", std::process::id()));
    actix::System::new().block_on(async {
        let broker = Broker::start(StorageConfig::new(&data_dir))?;
        broker.create_topic("greetings", 2, BTreeMap::new()).await?;

        let records: Vec<NewRecord> =
            ["hello", "bonjour", "hallo"].iter().map(|word| NewRecord::keyed("lang", word.to_string())).collect();
        let appended = broker.produce("greetings", 0, &records).await?;
        println!("appended offsets {}..={}", appended.base_offset, appended.last_offset);

        for record in broker.fetch("greetings", 0, 0, 1 << 20).await? {
            let value = record.value.map(|v| String::from_utf8_lossy(&v).into_owned());
            println!("offset {} value {:?}", record.offset, value);
        }
        let latest = broker.list_offset("greetings", 0, OffsetQuery::Latest).await?;
        println!("next offset {:?}", latest.map(|(offset, _)| offset));
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    std::fs::remove_dir_all(&data_dir)?;
    Ok(())
}
