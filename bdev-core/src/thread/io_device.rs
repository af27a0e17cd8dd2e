//! io_devices and io_channels, as SPDK's `spdk_io_device_register` /
//! `spdk_get_io_channel`: a device registers how to build its per-thread context; each
//! thread that asks gets one reference-counted channel per device, created on first use
//! and destroyed (its context dropped) when the last reference goes.
//!
//! [`IoDevice::for_each_channel`] visits the thread of every channel in turn, serially,
//! each visit free to finish asynchronously, then reports on the calling thread: the tool
//! for reset, quiesce and reconfiguration.

use std::any::Any;
use std::fmt;
use std::ops::Deref;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{RUNNING, ThreadHandle, ThreadInner, current_or, with_current};
use crate::error::{Error, Result};

static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

type CreateFn<C> = Box<dyn Fn() -> Result<C> + Send + Sync>;

struct DevShared<C> {
    id: u64,
    name: String,
    create: CreateFn<C>,
    state: Mutex<DevState>,
}

#[derive(Default)]
struct DevState {
    /// Threads holding a channel of this device.
    threads: Vec<ThreadHandle>,
    unregistering: bool,
    on_unregistered: Option<(ThreadHandle, Box<dyn FnOnce() + Send>)>,
}

impl<C> DevShared<C> {
    fn lock(&self) -> std::sync::MutexGuard<'_, DevState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A registered io_device whose per-thread channel context is `C`.
pub struct IoDevice<C: 'static> {
    shared: Arc<DevShared<C>>,
}

impl<C> Clone for IoDevice<C> {
    fn clone(&self) -> Self {
        IoDevice {
            shared: self.shared.clone(),
        }
    }
}

impl<C> fmt::Debug for IoDevice<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IoDevice({})", self.shared.name)
    }
}

struct ChanInner<C: 'static> {
    ctx: C,
    /// Declared after `ctx`, so dropped after it (fields drop in order): the device hears
    /// of the channel's release, and an unregister completes, only once the context (the
    /// module's channel) is gone, as SPDK orders it.
    reg: ChanReg<C>,
}

/// A channel's registration with its device and thread.
struct ChanReg<C: 'static> {
    dev: Arc<DevShared<C>>,
    thread: Weak<ThreadInner>,
    handle: ThreadHandle,
}

impl<C> Drop for ChanReg<C> {
    fn drop(&mut self) {
        if let Some(t) = self.thread.upgrade() {
            let mut map = t.channels.borrow_mut();
            if map
                .get(&self.dev.id)
                .is_some_and(|(w, _)| w.strong_count() == 0)
            {
                map.remove(&self.dev.id);
            }
        }
        let fire = {
            let mut st = self.dev.lock();
            if let Some(pos) = st.threads.iter().position(|h| *h == self.handle) {
                st.threads.swap_remove(pos);
            }
            if st.unregistering && st.threads.is_empty() {
                st.on_unregistered.take()
            } else {
                None
            }
        };
        if let Some((th, done)) = fire {
            if th.send_msg(done).is_err() {
                tracing::warn!(device = %self.dev.name, "unregister callback's thread has exited");
            }
        }
    }
}

/// A thread's reference to its channel of a device. Clones share the channel; when the
/// last goes, the context is dropped. Not `Send`: a channel belongs to its thread.
pub struct IoChannel<C: 'static> {
    inner: Rc<ChanInner<C>>,
}

impl<C> Clone for IoChannel<C> {
    fn clone(&self) -> Self {
        IoChannel {
            inner: self.inner.clone(),
        }
    }
}

impl<C> Deref for IoChannel<C> {
    type Target = C;
    #[inline]
    fn deref(&self) -> &C {
        &self.inner.ctx
    }
}

impl<C> fmt::Debug for IoChannel<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IoChannel({} on {})",
            self.inner.reg.dev.name,
            self.inner.reg.handle.name()
        )
    }
}

impl<C> IoChannel<C> {
    /// The thread this channel belongs to.
    pub fn thread(&self) -> &ThreadHandle {
        &self.inner.reg.handle
    }

    /// Whether two handles are the same channel.
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Rc::ptr_eq(&a.inner, &b.inner)
    }
}

/// The continuation of one [`IoDevice::for_each_channel`] visit: call
/// [`ForEachChannel::next`] (now or later, on the same thread) to go on to the next channel.
pub struct ForEachChannel {
    k: Box<dyn FnOnce(Result<()>) + Send>,
}

impl fmt::Debug for ForEachChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ForEachChannel")
    }
}

impl ForEachChannel {
    /// Finishes this visit: `Ok` moves on to the next channel, `Err` stops the iteration
    /// and hands the error to the completion.
    pub fn next(self, status: Result<()>) {
        (self.k)(status)
    }
}

type VisitFn<C> = dyn Fn(&IoChannel<C>, ForEachChannel) + Send + Sync;

struct Iter<C: 'static> {
    dev: Arc<DevShared<C>>,
    threads: Vec<ThreadHandle>,
    visit: Arc<VisitFn<C>>,
    done: Box<dyn FnOnce(Result<()>) + Send>,
    origin: ThreadHandle,
}

impl<C: 'static> Iter<C> {
    fn finish(self, r: Result<()>) {
        let Iter { done, origin, .. } = self;
        if origin.send_msg(move || done(r)).is_err() {
            tracing::warn!("for_each_channel: the calling thread has exited");
        }
    }

    fn step(self, i: usize) {
        let Some(th) = self.threads.get(i).cloned() else {
            return self.finish(Ok(()));
        };
        // The closure owns the iterator; if the thread is gone, the message comes back in
        // the error and we move on without it.
        let cell = Arc::new(Mutex::new(Some(self)));
        let c2 = cell.clone();
        let sent = th.send_msg(move || {
            let Some(it) = c2.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                return;
            };
            match lookup::<C>(it.dev.id) {
                Some(ch) => {
                    let visit = it.visit.clone();
                    let next = ForEachChannel {
                        k: Box::new(move |r| match r {
                            Ok(()) => it.step(i + 1),
                            Err(e) => it.finish(Err(e)),
                        }),
                    };
                    visit(&ch, next);
                }
                None => it.step(i + 1),
            }
        });
        if sent.is_err() {
            if let Some(it) = cell.lock().unwrap_or_else(|e| e.into_inner()).take() {
                it.step(i + 1);
            }
        }
    }
}

fn lookup<C: 'static>(id: u64) -> Option<IoChannel<C>> {
    with_current(|t| {
        let w = t.inner.channels.borrow().get(&id)?.0.upgrade()?;
        let inner = w.downcast::<ChanInner<C>>().ok()?;
        Some(IoChannel { inner })
    })
    .flatten()
}

impl<C: 'static> IoDevice<C> {
    /// Registers a device; `create` builds a channel context on the thread asking for it.
    pub fn register(
        name: impl Into<String>,
        create: impl Fn() -> Result<C> + Send + Sync + 'static,
    ) -> Self {
        IoDevice {
            shared: Arc::new(DevShared {
                id: NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed),
                name: name.into(),
                create: Box::new(create),
                state: Mutex::new(DevState::default()),
            }),
        }
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The current thread's channel of this device, created if it has none
    /// (`spdk_get_io_channel`).
    pub fn get_channel(&self) -> Result<IoChannel<C>> {
        let t = current_or("get_io_channel")?;
        if let Some(ch) = lookup::<C>(self.shared.id) {
            return Ok(ch);
        }
        if t.state() != RUNNING {
            return Err(Error::ThreadExited {
                name: t.name().to_string(),
            });
        }
        {
            let mut st = self.shared.lock();
            if st.unregistering {
                return Err(Error::DeviceUnregistering {
                    name: self.shared.name.clone(),
                });
            }
            // Count the thread before creating, so that an unregister racing with us waits.
            st.threads.push(t.handle());
        }
        let ctx = match (self.shared.create)() {
            Ok(c) => c,
            Err(e) => {
                let mut st = self.shared.lock();
                if let Some(pos) = st.threads.iter().position(|h| *h == t.handle()) {
                    st.threads.swap_remove(pos);
                }
                let fire = if st.unregistering && st.threads.is_empty() {
                    st.on_unregistered.take()
                } else {
                    None
                };
                drop(st);
                if let Some((th, done)) = fire {
                    let _ = th.send_msg(done);
                }
                return Err(Error::ChannelCreate {
                    name: self.shared.name.clone(),
                    source: Box::new(e),
                });
            }
        };
        let inner = Rc::new(ChanInner {
            ctx,
            reg: ChanReg {
                dev: self.shared.clone(),
                thread: Rc::downgrade(&t.inner),
                handle: t.handle(),
            },
        });
        let weak: Weak<dyn Any> = Rc::downgrade(&inner) as Weak<dyn Any>;
        t.inner
            .channels
            .borrow_mut()
            .insert(self.shared.id, (weak, self.shared.name.clone()));
        Ok(IoChannel { inner })
    }

    /// Number of threads holding a channel of this device.
    pub fn channel_count(&self) -> usize {
        self.shared.lock().threads.len()
    }

    /// Calls `visit` with each thread's channel, on that thread, one after the other; each
    /// visit continues the iteration through its [`ForEachChannel`]. Then `done` runs on the
    /// calling thread with the first error, if any (`spdk_for_each_channel`).
    pub fn for_each_channel(
        &self,
        visit: impl Fn(&IoChannel<C>, ForEachChannel) + Send + Sync + 'static,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Result<()> {
        let origin = current_or("for_each_channel")?.handle();
        let threads = self.shared.lock().threads.clone();
        let it = Iter {
            dev: self.shared.clone(),
            threads,
            visit: Arc::new(visit),
            done: Box::new(done),
            origin,
        };
        it.step(0);
        Ok(())
    }

    /// Unregisters the device (`spdk_io_device_unregister`): no new channels; `done` runs
    /// on the calling thread once every channel has been released.
    pub fn unregister(&self, done: impl FnOnce() + Send + 'static) -> Result<()> {
        let origin = current_or("io_device_unregister")?.handle();
        let mut st = self.shared.lock();
        st.unregistering = true;
        if st.threads.is_empty() {
            drop(st);
            origin.send_msg(done)
        } else {
            st.on_unregistered = Some((origin, Box::new(done)));
            Ok(())
        }
    }
}
