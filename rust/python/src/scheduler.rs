//! The scheduler for Python: `SchedulerQueues` (the delivery engine's
//! scheduled and ready queues), and the shaping arithmetic the engine applies
//! per connection (`RateLimiter`, `EventWindow`, `AdaptiveLimit`). Names of
//! sources, sites, tenants and campaigns are interned here; times are seconds
//! of the caller's clock.

use gateway_core::shaping::queues::{QueueKey, Queues, SlotId};
use gateway_core::shaping::rate::Rate;
use gateway_core::shaping::window::Threshold;
use gateway_core::shaping::Nanos;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};
use rustc_hash::FxHashMap as HashMap;

fn to_nanos(seconds: f64) -> Nanos {
    (seconds.max(0.0) * 1e9) as Nanos
}

fn to_seconds(nanos: Nanos) -> f64 {
    nanos as f64 / 1e9
}

fn qid_bytes(qid: &str) -> PyResult<[u8; 16]> {
    qid.as_bytes().try_into().map_err(|_| {
        PyValueError::new_err(format!("queue ID must be 16 ASCII characters: {qid:?}"))
    })
}

#[derive(Default)]
struct Names {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Names {
    /// "" is id 0 (none).
    fn id(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        self.names.push(name.to_owned());
        let id = self.names.len() as u32;
        self.ids.insert(name.to_owned(), id);
        id
    }

    fn name(&self, id: u32) -> &str {
        if id == 0 {
            ""
        } else {
            &self.names[id as usize - 1]
        }
    }
}

/// A message handed out: (slot, qid, (source, site, tenant, campaign), attempts).
type TakenTuple<'py> = (u32, Bound<'py, PyString>, Bound<'py, PyTuple>, u16);

/// Parse a rate like "100/s" or "2000/h": (count, period in seconds).
#[pyfunction]
pub fn parse_rate(text: &str) -> PyResult<(u64, f64)> {
    let rate: Rate = text
        .parse()
        .map_err(|e: gateway_core::shaping::rate::RateError| PyValueError::new_err(e.0))?;
    Ok((rate.count, to_seconds(rate.period)))
}

/// One GCRA rate limiter (e.g. one egress source towards one site).
#[pyclass(module = "gateway._core")]
pub struct RateLimiter {
    configured: Rate,
    rate: Rate,
    gcra: gateway_core::shaping::rate::Gcra,
}

#[pymethods]
impl RateLimiter {
    /// `rate` like "100/s", multiplied by `factor` (never below one per period).
    #[new]
    #[pyo3(signature = (rate, factor = 1.0))]
    fn new(rate: &str, factor: f64) -> PyResult<Self> {
        let rate = rate
            .parse::<Rate>()
            .map_err(|e| PyValueError::new_err(e.0))?;
        let mut limiter = Self {
            configured: rate,
            rate,
            gcra: Default::default(),
        };
        limiter.set_factor(factor);
        Ok(limiter)
    }

    /// Run at the configured rate times `factor` from now on, keeping what
    /// has been taken (automation lowers and restores rates this way).
    fn set_factor(&mut self, factor: f64) {
        self.rate = if factor == 1.0 {
            self.configured
        } else {
            self.configured.scaled(factor)
        };
    }

    /// Seconds until one event would be allowed at `now`, without taking it.
    fn wait(&self, now: f64) -> f64 {
        to_seconds(self.gcra.wait(self.rate, to_nanos(now)))
    }

    /// Take one event at `now` (seconds): 0.0 if allowed, else seconds to wait.
    fn try_take(&mut self, now: f64) -> f64 {
        match self.gcra.try_take(self.rate, to_nanos(now)) {
            Ok(()) => 0.0,
            Err(wait) => to_seconds(wait),
        }
    }
}

/// "N in D": has something happened `count` times within `within` seconds?
#[pyclass(module = "gateway._core")]
pub struct EventWindow {
    threshold: Threshold,
    window: gateway_core::shaping::window::EventWindow,
}

#[pymethods]
impl EventWindow {
    #[new]
    fn new(count: usize, within: f64) -> Self {
        Self {
            threshold: Threshold {
                count,
                within: to_nanos(within),
            },
            window: Default::default(),
        }
    }

    /// Record one event at `now`; True when the threshold is reached.
    fn record(&mut self, now: f64) -> bool {
        self.window.record(&self.threshold, to_nanos(now))
    }

    fn clear(&mut self) {
        self.window.clear();
    }
}

/// A limit that can be lowered and climbs back step by step after clean periods.
#[pyclass(module = "gateway._core")]
pub struct AdaptiveLimit {
    inner: gateway_core::shaping::recovery::AdaptiveLimit,
}

#[pymethods]
impl AdaptiveLimit {
    #[new]
    fn new(configured: f64, step: f64, clean_period: f64) -> Self {
        Self {
            inner: gateway_core::shaping::recovery::AdaptiveLimit::new(
                configured,
                step,
                to_nanos(clean_period),
            ),
        }
    }

    /// Multiply the current value by `factor` at `now`.
    fn lower(&mut self, factor: f64, now: f64) {
        self.inner.lower(factor, to_nanos(now));
    }

    /// The value in force at `now`, after the recovery steps that are due.
    fn value(&mut self, now: f64) -> f64 {
        self.inner.value(to_nanos(now))
    }
}

#[pyclass(module = "gateway._core")]
pub struct SchedulerQueues {
    queues: Queues,
    names: Names,
    /// One Python tuple per queue key, reused for every message handed out.
    key_tuples: HashMap<QueueKey, Py<PyTuple>>,
}

impl SchedulerQueues {
    fn key(&mut self, source: &str, site: &str, tenant: &str, campaign: &str) -> QueueKey {
        QueueKey {
            source: self.names.id(source),
            site: self.names.id(site),
            tenant: self.names.id(tenant),
            campaign: self.names.id(campaign),
        }
    }
}

#[pymethods]
impl SchedulerQueues {
    #[new]
    fn new() -> Self {
        Self {
            queues: Queues::new(),
            names: Names::default(),
            key_tuples: HashMap::default(),
        }
    }

    fn __len__(&self) -> usize {
        self.queues.len()
    }

    /// Queue one message for an attempt at `due`; returns its slot.
    #[pyo3(signature = (qid, source, site, due, tenant = "", campaign = "", attempts = 0))]
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        qid: &str,
        source: &str,
        site: &str,
        due: f64,
        tenant: &str,
        campaign: &str,
        attempts: u16,
    ) -> PyResult<u32> {
        let key = self.key(source, site, tenant, campaign);
        Ok(self
            .queues
            .insert(qid_bytes(qid)?, key, to_nanos(due), attempts))
    }

    /// Queue many messages, each a tuple (qid, source, site, due, tenant,
    /// campaign, attempts). Strings are read in place, not copied; the queue
    /// work runs with the GIL released.
    fn insert_many(&mut self, py: Python<'_>, messages: &Bound<'_, PyList>) -> PyResult<Vec<u32>> {
        let mut prepared = Vec::with_capacity(messages.len());
        for item in messages.iter() {
            let t = item.cast::<PyTuple>()?;
            if t.len() != 7 {
                return Err(PyValueError::new_err(
                    "a message is (qid, source, site, due, tenant, campaign, attempts)",
                ));
            }
            let text = |i: usize| -> PyResult<&str> { t.get_borrowed_item(i)?.extract::<&str>() };
            let key = self.key(text(1)?, text(2)?, text(4)?, text(5)?);
            let due: f64 = t.get_borrowed_item(3)?.extract()?;
            let attempts: u16 = t.get_borrowed_item(6)?.extract()?;
            prepared.push((qid_bytes(text(0)?)?, key, to_nanos(due), attempts));
        }
        let queues = &mut self.queues;
        Ok(py.detach(|| {
            prepared
                .into_iter()
                .map(|(qid, key, due, attempts)| queues.insert(qid, key, due, attempts))
                .collect()
        }))
    }

    /// Up to `max` ready messages, keys in turn.
    fn take_ready<'py>(
        &mut self,
        py: Python<'py>,
        now: f64,
        max: usize,
    ) -> PyResult<Vec<TakenTuple<'py>>> {
        let queues = &mut self.queues;
        let taken = py.detach(|| queues.take_ready(to_nanos(now), max));
        let mut out = Vec::with_capacity(taken.len());
        for t in taken {
            let key = match self.key_tuples.get(&t.key) {
                Some(tuple) => tuple.bind(py).clone(),
                None => {
                    let names = &self.names;
                    let tuple = PyTuple::new(
                        py,
                        [t.key.source, t.key.site, t.key.tenant, t.key.campaign]
                            .map(|id| names.name(id)),
                    )?;
                    self.key_tuples.insert(t.key, tuple.clone().unbind());
                    tuple
                }
            };
            let qid = std::str::from_utf8(&t.qid).unwrap_or("????????????????");
            out.push((t.slot, PyString::new(py, qid), key, t.attempts));
        }
        Ok(out)
    }

    /// Like `take_ready`, but only the slots: for callers that keep their own
    /// record per slot (the delivery scheduler does), which saves building a
    /// string and a tuple per message.
    fn take_ready_slots(&mut self, py: Python<'_>, now: f64, max: usize) -> Vec<SlotId> {
        let queues = &mut self.queues;
        let taken = py.detach(|| queues.take_ready(to_nanos(now), max));
        taken.into_iter().map(|t| t.slot).collect()
    }

    /// The attempts of these slots ended for good.
    fn finish_many(&mut self, py: Python<'_>, slots: Vec<SlotId>) {
        let queues = &mut self.queues;
        py.detach(|| slots.into_iter().for_each(|s| queues.finish(s)));
    }

    fn finish(&mut self, slot: SlotId) {
        self.queues.finish(slot);
    }

    /// The attempt of `slot` was deferred: try again at `due`.
    fn retry(&mut self, slot: SlotId, due: f64) {
        self.queues.retry(slot, to_nanos(due));
    }

    fn next_due(&mut self) -> Option<f64> {
        self.queues.next_due().map(to_seconds)
    }

    /// Bytes held per queued message.
    fn memory_per_message(&self) -> usize {
        self.queues.memory_per_message()
    }
}
