//! `tracechain`: see `tracechain --help`, and the README's "Rebuild a call
//! chain from the logs".

use std::{
    io::{IsTerminal as _, Write as _},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use callchain_tracechain::{Input, Logs, Traces, html, jaeger, json, parse_trace_id, text};
use clap::Parser;

/// Exit codes: 0 the chain is whole (every chain, with --check-all), 1 it
/// has a gap, 2 nothing to check or a usage error.
const GAPS: u8 = 1;
const TROUBLE: u8 = 2;

/// Rebuilds a request's call chain from the services' JSON logs (or from
/// Jaeger), prints it as a tree, and names its gaps.
///
/// The logs are files, folders (every file in them) or `-` for stdin; with
/// none, stdin. Exits 0 when the chain is whole, 1 when it has a gap (a
/// parent that never appears, a producer without consumer, a gRPC call
/// without its server span, a span of another trace), 2 when there is
/// nothing to check.
#[derive(Parser)]
#[command(
    name = "tracechain",
    version,
    override_usage = "tracechain <TRACE_ID> [FILES|DIRS|-]...\n       \
                      tracechain --last [FILES|DIRS|-]...\n       \
                      tracechain --check-all [FILES|DIRS|-]...\n       \
                      tracechain <TRACE_ID> --jaeger URL"
)]
struct Args {
    /// The trace id (32 hex digits, or the API's whole `traceparent`
    /// header), then the logs; with --last or --check-all, only the logs.
    #[arg(value_name = "TRACE_ID|LOGS")]
    args: Vec<String>,

    /// Read the trace from Jaeger's query API at URL (http://localhost:16686)
    /// instead of the logs.
    #[arg(long, value_name = "URL")]
    jaeger: Option<String>,

    /// Print the tree (or --check-all's answer) as JSON.
    #[arg(long)]
    json: bool,

    /// Also write the trace as a self-contained waterfall page to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,

    /// Take the newest trace of the logs.
    #[arg(long, conflicts_with_all = ["check_all", "jaeger"])]
    last: bool,

    /// Check every trace of the logs, and print how many are complete.
    #[arg(long, conflicts_with_all = ["jaeger", "html"])]
    check_all: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("tracechain: {error:#}");
            ExitCode::from(TROUBLE)
        }
    }
}

fn run(args: Args) -> anyhow::Result<u8> {
    let mut positional = args.args.into_iter();
    let trace_id = if args.last || args.check_all {
        None
    } else {
        let first = positional
            .next()
            .context("give a trace id (or --last, or --check-all); see --help")?;
        Some(parse_trace_id(&first)?)
    };
    let inputs: Vec<Input> = positional.map(|text| Input::parse(&text)).collect();

    let logs = match (&args.jaeger, &trace_id) {
        (Some(url), Some(trace_id)) => {
            if !inputs.is_empty() {
                bail!("--jaeger reads the trace from Jaeger: give no logs with it");
            }
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(jaeger::fetch(url, trace_id))?
        }
        _ => read_logs(inputs)?,
    };
    let traces = Traces::new(logs);

    if args.check_all {
        let summary = traces.check_all();
        if summary.traces == 0 {
            bail!("no span records in the logs (RUST_LOG=...,callchain::span=off turns them off)");
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&summary)?);
        } else {
            print!("{}", text::render_summary(&summary, 20));
        }
        return Ok(if summary.incomplete.is_empty() { 0 } else { GAPS });
    }

    let trace_id = match trace_id {
        Some(id) => id,
        None => traces
            .newest()
            .context("no span records in the logs (RUST_LOG=...,callchain::span=off turns them off)")?
            .to_owned(),
    };
    let Some(tree) = traces.tree(&trace_id) else {
        match &args.jaeger {
            Some(url) => bail!("Jaeger at {url} has no span of trace {trace_id}"),
            None => bail!("no span of trace {trace_id} in the logs"),
        }
    };
    if args.json {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        json::write(&tree, &mut out)?;
        writeln!(out)?;
        out.flush()?;
    } else {
        print!("{}", text::render(&tree));
    }
    if let Some(file) = &args.html {
        std::fs::write(file, html::render(&tree)).with_context(|| format!("cannot write {}", file.display()))?;
        eprintln!("tracechain: wrote {}", file.display());
    }
    Ok(if tree.is_complete() { 0 } else { GAPS })
}

fn read_logs(mut inputs: Vec<Input>) -> anyhow::Result<Logs> {
    if inputs.is_empty() {
        if std::io::stdin().is_terminal() {
            bail!("give the logs to read (files, folders, or - for stdin); see --help");
        }
        inputs.push(Input::Stdin);
    }
    let logs = Logs::read(&inputs)?;
    if let Some(first) = logs.unreadable.first() {
        eprintln!(
            "tracechain: {} span record(s) could not be read, the first: {first}",
            logs.unreadable.len()
        );
    }
    Ok(logs)
}
