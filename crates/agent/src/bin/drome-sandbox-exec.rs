//! The sandbox's launcher on its own (`drome sandbox-exec` is the same): enters a run's cgroups,
//! mount namespace and uid, then execs the run. The agent's tests use it; nodes may install it
//! beside `drome`.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let e = agent::sandbox::enter_and_exec(&args);
    eprintln!("drome-sandbox-exec: {e}");
    std::process::exit(127);
}
