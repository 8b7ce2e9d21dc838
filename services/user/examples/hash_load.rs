//! Load on the password hasher, run by hand against a running user service:
//! four concurrent batches of 100 `CreateUser` calls (what four full
//! `POST /rpc` batches of `user.create` become), while one caller logs in
//! again and again. Prints how the writes were answered, the logins'
//! latencies, and the service's peak resident memory (`VmHWM`).
//!
//! ```text
//! cargo run --release -p callchain-user --example hash_load -- <addr> <pid>
//! ```

use std::time::{Duration, Instant};

use callchain_proto::user::v1::{AuthenticateRequest, CreateUserRequest, user_service_client::UserServiceClient};
use tonic::Request;

const BATCHES: usize = 4;
const CALLS_PER_BATCH: usize = 100;
/// The API's default request budget, which it passes on as `grpc-timeout`.
const DEADLINE: Duration = Duration::from_secs(10);
const PASSWORD: &str = "correct horse battery staple";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(pid)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: hash_load <user service address> <its pid>");
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let probe = format!("probe-{run}@example.com");
    let mut client = UserServiceClient::new(channel.clone());
    client
        .create_user(CreateUserRequest {
            email: probe.clone(),
            name: "Probe".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await?;

    let started = Instant::now();
    let writes: Vec<_> = (0..BATCHES * CALLS_PER_BATCH)
        .map(|n| {
            let mut client = UserServiceClient::new(channel.clone());
            let email = format!("load-{run}-{n}@example.com");
            tokio::spawn(async move {
                let mut request = Request::new(CreateUserRequest {
                    email,
                    name: "Load".into(),
                    password: PASSWORD.into(),
                    ..Default::default()
                });
                request.set_timeout(DEADLINE);
                client
                    .create_user(request)
                    .await
                    .map(|_| ())
                    .map_err(|status| status.code())
            })
        })
        .collect();
    let logins = {
        let mut client = UserServiceClient::new(channel.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < Duration::from_secs(8) {
                let mut request = Request::new(AuthenticateRequest {
                    email: probe.clone(),
                    password: PASSWORD.into(),
                });
                request.set_timeout(DEADLINE);
                let at = Instant::now();
                let answer = client.authenticate(request).await;
                latencies.push((at.elapsed(), answer.map(|_| ()).map_err(|status| status.code())));
            }
            latencies
        })
    };
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    for write in writes {
        let answer = write.await?;
        *answers.entry(format!("{answer:?}")).or_default() += 1;
    }
    let writes_took = started.elapsed();
    let logins = logins.await?;

    let mut latencies: Vec<_> = logins.iter().map(|(latency, _)| *latency).collect();
    latencies.sort();
    let failed_logins = logins.iter().filter(|(_, answer)| answer.is_err()).count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak = status
        .lines()
        .find(|line| line.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?");
    println!("writes: {answers:?} in {writes_took:?}");
    println!(
        "logins: {} ({failed_logins} failed), p50 {:?}, max {:?}",
        latencies.len(),
        latencies.get(latencies.len() / 2),
        latencies.last()
    );
    println!("user service {peak}");
    Ok(())
}
