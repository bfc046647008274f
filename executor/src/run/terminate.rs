//! SIGTERM during a scheduled run: systemd sends it when the policy's `maxRuntime`
//! (`TimeoutStartSec=`) elapses and when the host shuts down, and follows with SIGKILL
//! `TimeoutStopSec=` later. The default action would end the process without a run record,
//! so the operator would keep showing the previous run and a hung job would look like a host
//! that went quiet. Instead the job records that it was stopped, and exits.
//!
//! The signal handler only writes one byte into a pipe (all a handler may safely do); a
//! thread waiting on the pipe does the rest. A handled signal is reset to its default in
//! exec'd children, so dump commands still stop on systemd's SIGTERM as they should (a
//! blocked signal mask, the other usual way, would be inherited and make them ignore it).

use std::sync::atomic::{AtomicI32, Ordering};

/// Exit code of a stopped run, the shell's convention for "killed by SIGTERM" (128 + 15).
pub const EXIT_TERMINATED: i32 = 128 + libc::SIGTERM;

static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigterm(_: libc::c_int) {
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; the buffer is a static byte.
        unsafe { libc::write(fd, b"t".as_ptr().cast(), 1) };
    }
}

/// Call `stop` on a thread of its own when SIGTERM arrives. `stop` is expected to exit the
/// process. Fails only if the pipe or the handler cannot be set up, which leaves the
/// default action in place.
pub fn on_sigterm_call(stop: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: plain syscalls on a local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let [read_fd, write_fd] = fds;
    WAKE_FD.store(write_fd, Ordering::Relaxed);
    std::thread::Builder::new()
        .name("sigterm".into())
        .spawn(move || {
            let mut b = [0u8; 1];
            loop {
                // SAFETY: reads into a local buffer from our own pipe.
                let n = unsafe { libc::read(read_fd, b.as_mut_ptr().cast(), 1) };
                if n == 1 {
                    break;
                }
                if n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                return;
            }
            stop();
        })?;
    // SAFETY: installs a handler that only performs an async-signal-safe write. SA_RESTART
    // keeps the job's own syscalls from failing with EINTR when the signal lands.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigterm as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
