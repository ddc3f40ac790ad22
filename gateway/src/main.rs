//! The `hermes-gateway` binary: the command line of the `hermes_gateway` library, whose
//! crate documentation (`lib.rs`) maps its modules.

fn main() {
    std::process::exit(hermes_gateway::main(None));
}
