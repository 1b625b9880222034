//! `serin-pause`: the sandbox process of every pod on the test bed's real node
//! (containerd's `sandbox_image`). It holds the pod's namespaces open, reaps the
//! children it inherits, and exits on SIGTERM or SIGINT. The upstream pause image
//! lives in a registry this test bed cannot reach, so it is built here.

use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGCHLD])?;
    for signal in signals.forever() {
        if signal != SIGCHLD {
            return Ok(());
        }
        // SAFETY: waitpid with WNOHANG only reaps exited children of this process.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
    }
    Ok(())
}
