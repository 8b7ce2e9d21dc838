//! The consumer's process: the allocator, and the runner shared by every
//! service (`callchain_runtime::runner`) with this service's settings.

#[global_allocator]
static ALLOCATOR: callchain_runtime::Allocator = callchain_runtime::Allocator;

fn main() -> anyhow::Result<()> {
    callchain_runtime::runner::main::<callchain_consumer::Config, _, _>(callchain_telemetry::init)
}
