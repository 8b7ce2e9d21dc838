//! A closed-loop load generator for the benchmarks: a fixed number of
//! workers, each sending its next request as soon as the last is answered,
//! for a fixed time; every latency kept.
//!
//! HTTP goes over [`Http1`], a keep-alive HTTP/1.1 connection that writes
//! prepared request bytes and reads the answer with `httparse` (the parser
//! under hyper): far less CPU per request than a general client, so on a
//! shared 2-core box the services, not the load generator, get the cores.
//! gRPC goes through tonic's own client.

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::Semaphore,
};

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Latency of every answered request, in milliseconds, sorted.
    pub latencies_ms: Vec<f64>,
    /// Requests that failed or were answered with an unexpected status.
    pub failed: u64,
    /// How long the run lasted.
    pub elapsed: Duration,
}

impl Outcome {
    /// Answered requests per second.
    pub fn rate(&self) -> f64 {
        self.latencies_ms.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p`th percentile latency in milliseconds (NaN when nothing was answered).
    pub fn percentile(&self, p: f64) -> f64 {
        percentile(&self.latencies_ms, p)
    }
}

/// The `p`th percentile of `sorted` (nearest rank; NaN when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// How a run sends: each worker as fast as it is answered, or paced.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// The next request as soon as the last is answered: the most the
    /// server can do, and its latency when saturated.
    Flat,
    /// So many requests a second in all, evenly spaced in time, each sent
    /// by whichever worker is free: latency below saturation.
    Rate(u32),
}

/// Runs `workers` workers for `duration`. Each is made by `worker(n)` (say,
/// a connection) and then called in a loop, as `pace` says: `call(state)`
/// is one request, handing the state back with `Ok(true)` for an expected
/// answer.
pub async fn closed_loop<S, Make, MakeFut, Call, CallFut>(
    workers: usize,
    duration: Duration,
    pace: Pace,
    worker: Make,
    call: Call,
) -> anyhow::Result<Outcome>
where
    S: Send + 'static,
    Make: Fn(usize) -> MakeFut,
    MakeFut: Future<Output = anyhow::Result<S>>,
    Call: Fn(S) -> CallFut + Clone + Send + 'static,
    CallFut: Future<Output = (S, anyhow::Result<bool>)> + Send,
{
    let mut states = Vec::with_capacity(workers);
    for n in 0..workers {
        states.push(worker(n).await?);
    }
    let started = Instant::now();
    let until = started + duration;
    // Paced, a thread of the load generator's releases one request every
    // `1 / rate` seconds, to whichever worker is free: the requests arrive
    // spread evenly, as independent clients' would. (Tokio's timers tick
    // in whole milliseconds, so workers each on their own timer would send
    // in bunches at each tick, and queue behind one another.)
    let turns = match pace {
        Pace::Flat => None,
        Pace::Rate(rate) => Some(pacer(rate, until)?),
    };
    let tasks: Vec<_> = states
        .into_iter()
        .map(|mut state| {
            let call = call.clone();
            let turns = turns.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 16);
                let mut failed = 0u64;
                while Instant::now() < until {
                    if let Some(turns) = &turns
                        && !turn(turns).await
                    {
                        break;
                    }
                    let sent = Instant::now();
                    let (next, answer) = call(state).await;
                    state = next;
                    match answer {
                        Ok(true) => latencies.push(sent.elapsed().as_secs_f64() * 1000.0),
                        Ok(false) | Err(_) => failed += 1,
                    }
                }
                (latencies, failed)
            })
        })
        .collect();
    let mut outcome = Outcome::default();
    for task in tasks {
        let (latencies, failed) = task.await?;
        outcome.latencies_ms.extend(latencies);
        outcome.failed += failed;
    }
    outcome.elapsed = started.elapsed();
    outcome.latencies_ms.sort_by(f64::total_cmp);
    Ok(outcome)
}

/// The turns of a paced run: a thread adds one permit to the returned
/// semaphore every `1 / rate` seconds until `until`, then closes it so idle
/// workers stop.
fn pacer(rate: u32, until: Instant) -> anyhow::Result<Arc<Semaphore>> {
    let permits = Arc::new(Semaphore::new(0));
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let pacer = permits.clone();
    std::thread::Builder::new().name("load pacer".into()).spawn(move || {
        let mut next = Instant::now();
        while next < until {
            next += period;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            pacer.add_permits(1);
        }
        pacer.close();
    })?;
    Ok(permits)
}

/// Waits for a turn; `false` once the run is over.
async fn turn(permits: &Semaphore) -> bool {
    match permits.acquire().await {
        Ok(permit) => {
            permit.forget();
            true
        }
        Err(_) => false,
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Http1 {
    stream: TcpStream,
    buffer: Vec<u8>,
    body: std::ops::Range<usize>,
}

impl Http1 {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buffer: Vec::with_capacity(8192),
            body: 0..0,
        })
    }

    /// Sends `request` (a whole HTTP/1.1 request, as [`request`] makes it)
    /// and reads the whole answer; its status.
    pub async fn send(&mut self, request: &[u8]) -> anyhow::Result<u16> {
        self.stream.write_all(request).await?;
        self.buffer.clear();
        loop {
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                anyhow::bail!("the server closed the connection");
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(head) = response.parse(&self.buffer)? else {
                continue;
            };
            let status = response.code.context("a status code")?;
            let length: usize = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap_or("").trim().parse())
                .transpose()?
                .context("an answer without Content-Length")?;
            while self.buffer.len() < head + length {
                if self.stream.read_buf(&mut self.buffer).await? == 0 {
                    anyhow::bail!("the server closed the connection mid-answer");
                }
            }
            self.body = head..head + length;
            return Ok(status);
        }
    }

    /// The body of the last answer.
    pub fn body(&self) -> &[u8] {
        &self.buffer[self.body.clone()]
    }
}

/// The bytes of an HTTP/1.1 request to `host`, with a bearer `token` and,
/// when given, a JSON `body`.
pub fn request(method: &str, path: &str, host: SocketAddr, token: &str, body: Option<&str>) -> Vec<u8> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n");
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    request.into_bytes()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn a_paced_run_sends_at_its_rate_evenly_spaced() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let record = sent.clone();
        let outcome = closed_loop(
            8,
            Duration::from_secs(1),
            Pace::Rate(2_000),
            |_| async { Ok(()) },
            move |()| {
                record.lock().unwrap().push(Instant::now());
                async { ((), Ok(true)) }
            },
        )
        .await
        .unwrap();
        let answered = outcome.latencies_ms.len();
        assert!(
            (1_800..=2_100).contains(&answered),
            "{answered} requests in 1 s at 2,000/s"
        );
        // Half a millisecond apart, not in bunches at each millisecond tick.
        let mut sent = sent.lock().unwrap().clone();
        sent.sort();
        let gaps: Vec<f64> = sent
            .windows(2)
            .map(|pair| (pair[1] - pair[0]).as_secs_f64() * 1e3)
            .collect();
        let bunched = gaps.iter().filter(|&&gap| gap < 0.1).count();
        assert!(
            bunched * 4 < gaps.len(),
            "{bunched} of {} sends came within 0.1 ms of the one before",
            gaps.len()
        );
    }
}
