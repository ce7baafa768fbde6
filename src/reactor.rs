//! The event loop's plumbing: one mio `Poll`, a token allocator and the idle tick.
//!
//! Every registration gets a fresh token, so no source owns a range by convention. The
//! sources themselves register through a `Registrar` and handle their own events.

use mio::event::Source;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Hands out tokens; released ones are reused.
#[derive(Debug, Default)]
pub struct Tokens {
    next: usize,
    free: Vec<Token>,
}

impl Tokens {
    pub fn allocate(&mut self) -> Token {
        self.free.pop().unwrap_or_else(|| {
            let t = Token(self.next);
            self.next += 1;
            t
        })
    }

    pub fn release(&mut self, token: Token) {
        self.free.push(token);
    }
}

/// One readiness event, copied out of mio's buffer so that handlers may register and
/// deregister while the turn's events are dispatched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub token: Token,
    pub readable: bool,
    pub writable: bool,
}

pub struct Reactor {
    poll: Poll,
    events: Events,
    tokens: Tokens,
}

/// Registers sources with the reactor, each under a token of its own.
pub struct Registrar<'r> {
    registry: &'r Registry,
    tokens: &'r mut Tokens,
}

impl Registrar<'_> {
    pub fn register<S: Source + ?Sized>(
        &mut self,
        source: &mut S,
        interest: Interest,
    ) -> io::Result<Token> {
        let token = self.tokens.allocate();
        match self.registry.register(source, token, interest) {
            Ok(()) => Ok(token),
            Err(e) => {
                self.tokens.release(token);
                Err(e)
            }
        }
    }

    pub fn deregister<S: Source + ?Sized>(&mut self, source: &mut S, token: Token) {
        let _ = self.registry.deregister(source);
        self.tokens.release(token);
    }

    /// The reactor's waker (mio allows one per poll): other threads call `wake` to have the
    /// loop look at their results.
    pub fn waker(&mut self) -> io::Result<(Token, Arc<Waker>)> {
        let token = self.tokens.allocate();
        Ok((token, Arc::new(Waker::new(self.registry, token)?)))
    }
}

impl Reactor {
    pub fn new() -> io::Result<Reactor> {
        Ok(Reactor {
            poll: Poll::new()?,
            events: Events::with_capacity(64),
            tokens: Tokens::default(),
        })
    }

    pub fn registrar(&mut self) -> Registrar<'_> {
        Registrar {
            registry: self.poll.registry(),
            tokens: &mut self.tokens,
        }
    }

    /// Waits up to `timeout` and puts the ready sources in `ready` (none when a signal
    /// interrupted the wait).
    pub fn wait(&mut self, timeout: Duration, ready: &mut Vec<Ready>) -> io::Result<()> {
        ready.clear();
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        ready.extend(self.events.iter().map(|e| Ready {
            token: e.token(),
            readable: e.is_readable() || e.is_read_closed(),
            writable: e.is_writable(),
        }));
        Ok(())
    }
}

/// The idle tick: the loop re-reads the kernel's state, pings the watchdog and expires
/// control connections this often, even when no event comes.
#[derive(Debug)]
pub struct Ticker {
    period: Duration,
    last: Instant,
}

impl Ticker {
    pub fn new(period: Duration, now: Instant) -> Ticker {
        Ticker { period, last: now }
    }

    /// How long the loop may wait for events: not at all when it has work queued.
    pub fn timeout(&self, busy: bool, now: Instant) -> Duration {
        if busy {
            Duration::ZERO
        } else {
            self.period
                .saturating_sub(now.saturating_duration_since(self.last))
        }
    }

    /// Whether a tick is due; if so the next is a period from `now`.
    pub fn due(&mut self, now: Instant) -> bool {
        let due = now.saturating_duration_since(self.last) >= self.period;
        if due {
            self.last = now;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tokens_are_unique_until_released() {
        let mut t = Tokens::default();
        let a = t.allocate();
        let b = t.allocate();
        assert_ne!(a, b);
        t.release(a);
        assert_eq!(t.allocate(), a);
        assert_ne!(t.allocate(), b);
    }

    #[test]
    fn each_source_is_reported_under_its_own_token() {
        let mut reactor = Reactor::new().unwrap();
        let (mut a, mut a_peer) = mio::net::UnixStream::pair().unwrap();
        let (mut b, _b_peer) = mio::net::UnixStream::pair().unwrap();
        let mut reg = reactor.registrar();
        let ta = reg.register(&mut a, Interest::READABLE).unwrap();
        let tb = reg.register(&mut b, Interest::READABLE).unwrap();
        let (tw, waker) = reg.waker().unwrap();
        assert!(ta != tb && tb != tw && ta != tw);
        a_peer.write_all(b"x").unwrap();
        waker.wake().unwrap();
        let mut ready = Vec::new();
        let mut seen = Vec::new();
        for _ in 0..10 {
            reactor
                .wait(Duration::from_millis(100), &mut ready)
                .unwrap();
            seen.extend(ready.iter().map(|r| r.token));
            if seen.contains(&ta) && seen.contains(&tw) {
                break;
            }
        }
        assert!(seen.contains(&ta) && seen.contains(&tw), "{seen:?}");
        assert!(!seen.contains(&tb), "{seen:?}");
        // Deregistered: its token is free again and it reports nothing more.
        reactor.registrar().deregister(&mut a, ta);
        a_peer.write_all(b"y").unwrap();
        reactor.wait(Duration::from_millis(50), &mut ready).unwrap();
        assert!(ready.iter().all(|r| r.token != ta), "{ready:?}");
        let (mut c, _c_peer) = mio::net::UnixStream::pair().unwrap();
        assert_eq!(
            reactor
                .registrar()
                .register(&mut c, Interest::READABLE)
                .unwrap(),
            ta
        );
    }

    #[test]
    fn the_tick_waits_what_is_left_of_its_period() {
        let t0 = Instant::now();
        let mut tick = Ticker::new(Duration::from_secs(1), t0);
        let later = t0 + Duration::from_millis(300);
        assert_eq!(tick.timeout(false, later), Duration::from_millis(700));
        assert_eq!(tick.timeout(true, later), Duration::ZERO);
        assert!(!tick.due(later));
        assert!(tick.due(t0 + Duration::from_secs(1)));
        assert_eq!(
            tick.timeout(false, t0 + Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }
}
