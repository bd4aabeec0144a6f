//! The `laminardb` command line (see [`laminardb::cli`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    // Ctrl-C sets the flag; the command drains and shuts down gracefully.
    std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                flag.store(true, Ordering::Release);
            }
        }
    });
    let code = laminardb::cli::main_with(&args, &|| interrupted.load(Ordering::Acquire), &mut std::io::stdout());
    std::process::exit(code);
}
