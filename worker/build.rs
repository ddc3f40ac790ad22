//! The worker is linked as a position-dependent executable (`-no-pie`).
//!
//! In `per-request` mode a worker is started for every message, so its start-up is on the
//! message path and its CPU bounds the rate. As a PIE, the dynamic loader applied 25,694
//! relative relocations at every start, writing (and so copying) every page of the 500 KB
//! of `.data.rel.ro` and the GOT: 257 page faults and 1.0 ms of CPU before `main`, against
//! 114 faults and 0.75 ms linked at a fixed address; over a whole worker life in the
//! throughput bench about 0.6 ms of CPU (docs/BENCHMARKS.md, "posix_spawn and a
//! fixed-address worker").
//!
//! The price is that this executable's own code and data sit at the same address in every
//! worker (its libraries, heap, stacks and mappings are still randomised). The gateway, which
//! holds the token and the store, stays a PIE; tools never run this image (they are exec'd
//! through `sandbox-exec`, which replaces it).
fn main() {
    println!("cargo:rustc-link-arg-bin=hermes-worker=-no-pie");
    // The code in a segment of its own that starts and ends on a 2 MiB boundary, so the
    // template can move all of it into huge pages (`code_pages`).
    println!("cargo:rustc-link-arg-bin=hermes-worker=-Wl,-z,separate-code");
    println!("cargo:rustc-link-arg-bin=hermes-worker=-Wl,-z,max-page-size=0x200000");
}
