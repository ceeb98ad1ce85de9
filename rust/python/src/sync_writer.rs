//! `SyncWriter`: appends and `fdatasync`s on a thread of its own that never
//! takes the GIL, and tells the asyncio loop through a socket it watches.
//!
//! Why: the spool's group commit ran on a Python thread, which needs the GIL
//! after every wait and system call (4–6 thread switches per batch here, about
//! 75 µs of CPU on this project's VM). This thread takes a job, writes it,
//! syncs it, sets the result aside and writes one byte to the socket; the
//! loop reads the results when epoll says so, with what else woke it.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

struct Job {
    ticket: u64,
    path: PathBuf,
    data: Vec<u8>,
    sync_dir: Option<PathBuf>,
}

type Results = Arc<Mutex<Vec<(u64, i32)>>>;

/// Jobs (append these bytes to this existing file, fdatasync it, and fsync
/// this directory first when given) done in order on one thread. `submit`
/// returns at once; `completed` gives `(ticket, errno)` pairs, 0 for success,
/// once `fileno()` is readable. The thread keeps the last file it wrote open
/// (the writer's current segment), and drops it after a failure.
#[pyclass(module = "gateway._core")]
pub struct SyncWriter {
    jobs: Option<mpsc::Sender<Job>>,
    results: Results,
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

fn run(jobs: &mpsc::Receiver<Job>, results: &Results, mut wake: UnixStream) {
    let mut open: Option<(PathBuf, File)> = None;
    while let Ok(job) = jobs.recv() {
        let errno = match carry(&job, &mut open) {
            Ok(()) => 0,
            Err(e) => {
                open = None;
                e.raw_os_error().unwrap_or(EIO)
            }
        };
        results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((job.ticket, errno));
        // A full socket means the loop has a wakeup pending already.
        let _ = wake.write(&[1]);
    }
}

const EIO: i32 = 5; // for an error without an OS code

fn carry(job: &Job, open: &mut Option<(PathBuf, File)>) -> std::io::Result<()> {
    if let Some(dir) = &job.sync_dir {
        File::open(dir)?.sync_all()?;
    }
    let file = match open {
        Some((path, file)) if *path == job.path => file,
        _ => {
            let file = OpenOptions::new().append(true).open(&job.path)?;
            &mut open.insert((job.path.clone(), file)).1
        }
    };
    file.write_all(&job.data)?;
    file.sync_data()
}

#[pymethods]
impl SyncWriter {
    #[new]
    fn new() -> PyResult<Self> {
        let (wake, signal) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        signal.set_nonblocking(true)?;
        let (sender, receiver) = mpsc::channel();
        let results: Results = Arc::default();
        let theirs = Arc::clone(&results);
        let thread = std::thread::Builder::new()
            .name("spool-sync".into())
            .spawn(move || run(&receiver, &theirs, signal))?;
        Ok(Self {
            jobs: Some(sender),
            results,
            wake,
            thread: Some(thread),
        })
    }

    /// The descriptor to watch for readability (`loop.add_reader`).
    fn fileno(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Queue a job: `data` appended to the file at `path` and synced, after
    /// an fsync of the directory `sync_dir` when given.
    #[pyo3(signature = (ticket, path, data, sync_dir = None))]
    fn submit(
        &self,
        ticket: u64,
        path: PathBuf,
        data: &[u8],
        sync_dir: Option<PathBuf>,
    ) -> PyResult<()> {
        let job = Job {
            ticket,
            path,
            data: data.to_vec(),
            sync_dir,
        };
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(|| PyRuntimeError::new_err("the sync writer is closed"))
    }

    /// The jobs done since the last call: `(ticket, errno)`, 0 for success.
    fn completed(&self) -> Vec<(u64, i32)> {
        let mut sink = [0u8; 256];
        loop {
            match (&self.wake).read(&mut sink) {
                Ok(n) if n > 0 => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                _ => break,
            }
        }
        std::mem::take(&mut *self.results.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Finish the queued jobs and stop the thread.
    fn close(&mut self, py: Python<'_>) {
        py.detach(|| self.stop());
    }
}

impl SyncWriter {
    fn stop(&mut self) {
        self.jobs = None; // the thread ends once it has done what was queued
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for SyncWriter {
    fn drop(&mut self) {
        self.stop();
    }
}
