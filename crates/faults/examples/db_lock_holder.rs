//! Takes a PostgreSQL table lock with a `db.lock` fault and holds it until
//! killed: the process the dead-man's-switch test kills with SIGKILL.
//!
//! Usage: db_lock_holder URL TABLE FAULT_ID LEASE

use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, table, id, lease] = args.as_slice() else {
        return Err("usage: db_lock_holder URL TABLE FAULT_ID LEASE".into());
    };
    let lease: faultline_spec::units::Duration = lease.parse()?;
    let spec: faultline_spec::fault::DbLock =
        serde_yaml::from_str(&format!("{{ url: '{url}', table: {table} }}"))?;
    let fault = faultline_faults::db::DbLockFault::new(id, &spec, lease.get())?;
    fault.inject().await?;
    #[allow(clippy::print_stdout)]
    {
        println!("held");
    }
    // Bounded: the test kills it long before this.
    tokio::time::sleep(Duration::from_secs(60)).await;
    fault.revert().await?;
    Ok(())
}
