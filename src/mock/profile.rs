//! Behaviour profiles: what a fake server does besides answering correctly. Read from YAML
//! (`mock-services/*.yaml`, also built into the binary) or built in code by tests.
//!
//! Per request, in this order: a stream reset or connection drop (`resets`), a stall
//! (`stall`), then the protocol answer; a valid request may instead get an outage 503
//! (`outages`), a throttling 429 (`throttle`) or an error from the mix (`errors`); then the
//! response waits for the `latency` draw. `goaway_after` sends a graceful GOAWAY once a
//! connection has carried that many streams.

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// The profiles shipped in `mock-services/`, built in so the binary works anywhere.
const BUILT_IN: &[(&str, &str)] = &[
    ("happy", include_str!("../../mock-services/happy.yaml")),
    ("flaky", include_str!("../../mock-services/flaky.yaml")),
    (
        "throttled",
        include_str!("../../mock-services/throttled.yaml"),
    ),
    ("outage", include_str!("../../mock-services/outage.yaml")),
    ("goaway", include_str!("../../mock-services/goaway.yaml")),
    ("resets", include_str!("../../mock-services/resets.yaml")),
    ("stall", include_str!("../../mock-services/stall.yaml")),
];

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("profile {name}: {source}")]
    Parse {
        name: String,
        source: serde_yaml_ng::Error,
    },
    #[error("profile {name}: {problem}")]
    Invalid { name: String, problem: String },
    #[error("unknown profile {0:?} (built in: happy, flaky, throttled, outage, goaway, resets, stall; or a path to a .yaml file)")]
    Unknown(String),
}

/// A behaviour profile. `Profile::default()` is `happy`: instant, always correct.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default)]
    pub name: String,
    /// Seed for every random draw (error mix, latency, resets, stalls): same seed and same
    /// request order give the same answers. Random when absent.
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub latency: Latency,
    /// Error mix: each valid request gets at most one of these, with the given probability.
    #[serde(default)]
    pub errors: Vec<ErrorRate>,
    /// 429 bursts: while the window is open, valid requests get 429 with `Retry-After`.
    #[serde(default)]
    pub throttle: Option<Throttle>,
    /// 503 outage windows.
    #[serde(default)]
    pub outages: Vec<Window>,
    /// Graceful GOAWAY once a connection has carried this many streams.
    #[serde(default)]
    pub goaway_after: Option<u64>,
    #[serde(default)]
    pub resets: Resets,
    #[serde(default)]
    pub stall: Option<Stall>,
}

/// Response latency distribution.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(tag = "dist", rename_all = "lowercase", deny_unknown_fields)]
pub enum Latency {
    #[default]
    None,
    Fixed {
        ms: f64,
    },
    Uniform {
        min_ms: f64,
        max_ms: f64,
    },
    /// Log-normal: `median_ms * exp(sigma * N(0,1))`; a long right tail like real services.
    #[serde(rename = "lognormal")]
    LogNormal {
        median_ms: f64,
        sigma: f64,
    },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRate {
    /// The protocol's reason name (APNs `InternalServerError`, ...); the handler picks the
    /// HTTP status that goes with it.
    pub reason: String,
    /// Probability in 0..=1.
    pub rate: f64,
}

/// A time window relative to server start: open from `start_ms` for `duration_ms`, repeated
/// every `every_ms` when set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    #[serde(default)]
    pub start_ms: u64,
    pub duration_ms: u64,
    #[serde(default)]
    pub every_ms: Option<u64>,
}

impl Window {
    pub fn is_open(&self, since_start: Duration) -> bool {
        let now = since_start.as_millis() as u64;
        let Some(mut t) = now.checked_sub(self.start_ms) else {
            return false;
        };
        if let Some(every) = self.every_ms.filter(|e| *e > 0) {
            t %= every;
        }
        t < self.duration_ms
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Throttle {
    #[serde(flatten)]
    pub window: Window,
    /// `Retry-After` seconds sent with each 429.
    #[serde(default = "one")]
    pub retry_after_s: u64,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resets {
    /// Probability that a request is answered with RST_STREAM (HTTP/2) instead of a response.
    #[serde(default)]
    pub stream_rate: f64,
    /// Probability that a request makes the server drop its whole connection (TCP close,
    /// no GOAWAY): every stream in flight on it is lost.
    #[serde(default)]
    pub connection_rate: f64,
}

/// A fraction of requests wait `ms` before anything else happens (a hung backend).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stall {
    pub rate: f64,
    pub ms: u64,
}

impl Profile {
    /// A built-in profile by name, or a YAML file when `name_or_path` names one (a path, or a
    /// name found as `mock-services/<name>.yaml` in the working directory).
    pub fn load(name_or_path: &str) -> Result<Profile, ProfileError> {
        let as_path = Path::new(name_or_path);
        let local = Path::new("mock-services").join(format!("{name_or_path}.yaml"));
        let file = if as_path.is_file() {
            Some(as_path.to_path_buf())
        } else if local.is_file() {
            Some(local)
        } else {
            None
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path).map_err(|source| ProfileError::Read {
                path: path.display().to_string(),
                source,
            })?;
            return Profile::from_yaml(&path.display().to_string(), &text);
        }
        // A path (a directory in it, or a YAML extension) names a file, never a built-in
        // profile: one that is not there is said so, not "unknown profile".
        let looks_like_path = name_or_path.contains(std::path::MAIN_SEPARATOR)
            || [".yaml", ".yml"]
                .iter()
                .any(|ext| name_or_path.to_ascii_lowercase().ends_with(ext));
        if looks_like_path {
            let text = std::fs::read_to_string(as_path).map_err(|source| ProfileError::Read {
                path: name_or_path.to_string(),
                source,
            })?;
            return Profile::from_yaml(name_or_path, &text);
        }
        Profile::built_in(name_or_path)
            .ok_or_else(|| ProfileError::Unknown(name_or_path.to_string()))?
    }

    /// A profile shipped with pusher, by name.
    pub fn built_in(name: &str) -> Option<Result<Profile, ProfileError>> {
        BUILT_IN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, text)| Profile::from_yaml(n, text))
    }

    pub fn built_in_names() -> impl Iterator<Item = &'static str> {
        BUILT_IN.iter().map(|(n, _)| *n)
    }

    pub fn from_yaml(name: &str, text: &str) -> Result<Profile, ProfileError> {
        let mut profile: Profile =
            serde_yaml_ng::from_str(text).map_err(|source| ProfileError::Parse {
                name: name.to_string(),
                source,
            })?;
        if profile.name.is_empty() {
            profile.name = name.to_string();
        }
        profile.validate()?;
        Ok(profile)
    }

    /// Rejects rates outside 0..=1, error mixes over 1, and impossible latencies.
    pub fn validate(&self) -> Result<(), ProfileError> {
        let invalid = |problem: String| ProfileError::Invalid {
            name: self.name.clone(),
            problem,
        };
        let rate_ok = |r: f64| (0.0..=1.0).contains(&r);
        for e in &self.errors {
            if !rate_ok(e.rate) {
                return Err(invalid(format!(
                    "errors: rate {} of {} is not in 0..=1",
                    e.rate, e.reason
                )));
            }
        }
        let total: f64 = self.errors.iter().map(|e| e.rate).sum();
        if total > 1.0 + 1e-9 {
            return Err(invalid(format!(
                "errors: rates add up to {total}, more than 1"
            )));
        }
        for (what, r) in [
            ("resets.stream_rate", self.resets.stream_rate),
            ("resets.connection_rate", self.resets.connection_rate),
            (
                "stall.rate",
                self.stall.as_ref().map(|s| s.rate).unwrap_or(0.0),
            ),
        ] {
            if !rate_ok(r) {
                return Err(invalid(format!("{what}: {r} is not in 0..=1")));
            }
        }
        let bad_ms = |ms: f64| !ms.is_finite() || ms < 0.0;
        match self.latency {
            Latency::None => {}
            Latency::Fixed { ms } if bad_ms(ms) => {
                return Err(invalid(format!("latency: ms {ms} must be >= 0")))
            }
            Latency::Uniform { min_ms, max_ms }
                if bad_ms(min_ms) || bad_ms(max_ms) || min_ms > max_ms =>
            {
                return Err(invalid(format!(
                    "latency: need 0 <= min_ms ({min_ms}) <= max_ms ({max_ms})"
                )))
            }
            Latency::LogNormal { median_ms, sigma } if bad_ms(median_ms) || bad_ms(sigma) => {
                return Err(invalid(format!(
                    "latency: median_ms ({median_ms}) and sigma ({sigma}) must be >= 0"
                )))
            }
            _ => {}
        }
        if self.goaway_after == Some(0) {
            return Err(invalid("goaway_after must be at least 1".into()));
        }
        Ok(())
    }

    /// True when answering needs no random draw and no clock (the fast path).
    fn is_plain(&self) -> bool {
        matches!(self.latency, Latency::None)
            && self.errors.is_empty()
            && self.throttle.is_none()
            && self.outages.is_empty()
            && self.resets == Resets::default()
            && self.stall.is_none()
    }
}

/// What the fault layer does to a request before the protocol handler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disruption {
    ResetStream,
    DropConnection,
    Stall(Duration),
}

/// A scripted answer for a valid request; the protocol handler renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scripted {
    /// Outage window: 503.
    Unavailable,
    /// Throttle burst: 429 with `Retry-After`.
    Throttled { retry_after_s: u64 },
    /// From the error mix: the protocol's reason name.
    Error(String),
}

/// A profile in action: its clock origin and its random source.
#[derive(Debug)]
pub struct Faults {
    profile: Profile,
    plain: bool,
    started: Instant,
    rng: Mutex<StdRng>,
}

impl Faults {
    pub fn new(profile: Profile) -> Faults {
        let rng = match profile.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Faults {
            plain: profile.is_plain(),
            profile,
            started: Instant::now(),
            rng: Mutex::new(rng),
        }
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    fn draw(&self) -> f64 {
        self.rng.lock().random::<f64>()
    }

    /// Reset, drop or stall this request? Drawn before the handler runs.
    pub fn disruption(&self) -> Option<Disruption> {
        if self.plain {
            return None;
        }
        let r = &self.profile.resets;
        if r.stream_rate > 0.0 && self.draw() < r.stream_rate {
            return Some(Disruption::ResetStream);
        }
        if r.connection_rate > 0.0 && self.draw() < r.connection_rate {
            return Some(Disruption::DropConnection);
        }
        match &self.profile.stall {
            Some(s) if s.rate > 0.0 && self.draw() < s.rate => {
                Some(Disruption::Stall(Duration::from_millis(s.ms)))
            }
            _ => None,
        }
    }

    /// A scripted answer for a request that passed validation, if the profile wants one.
    pub fn scripted(&self) -> Option<Scripted> {
        if self.plain {
            return None;
        }
        let since = self.started.elapsed();
        if self.profile.outages.iter().any(|w| w.is_open(since)) {
            return Some(Scripted::Unavailable);
        }
        if let Some(t) = &self.profile.throttle {
            if t.window.is_open(since) {
                return Some(Scripted::Throttled {
                    retry_after_s: t.retry_after_s,
                });
            }
        }
        if self.profile.errors.is_empty() {
            return None;
        }
        // One draw picks at most one reason: the rates stack up along 0..1.
        let mut x = self.draw();
        for e in &self.profile.errors {
            if x < e.rate {
                return Some(Scripted::Error(e.reason.clone()));
            }
            x -= e.rate;
        }
        None
    }

    /// How long to hold the response.
    pub fn latency(&self) -> Option<Duration> {
        let ms = match self.profile.latency {
            Latency::None => return None,
            Latency::Fixed { ms } => ms,
            Latency::Uniform { min_ms, max_ms } => min_ms + (max_ms - min_ms) * self.draw(),
            Latency::LogNormal { median_ms, sigma } => {
                // Box-Muller: two uniform draws give one standard normal (rand_distr is not a
                // dependency, and this is the only distribution we need from it).
                let u1 = self.draw().max(f64::MIN_POSITIVE);
                let u2 = self.draw();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                median_ms * (sigma * z).exp()
            }
        };
        (ms > 0.0).then(|| Duration::from_secs_f64(ms.min(3_600_000.0) / 1000.0))
    }

    pub fn goaway_after(&self) -> Option<u64> {
        self.profile.goaway_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_profile_parses_and_matches_its_file() {
        for name in Profile::built_in_names() {
            let p = Profile::built_in(name).unwrap().unwrap();
            assert_eq!(p.name, name);
            let on_disk = std::fs::read_to_string(format!("mock-services/{name}.yaml")).unwrap();
            assert_eq!(Profile::from_yaml(name, &on_disk).unwrap(), p);
        }
        assert!(Profile::built_in("happy").unwrap().unwrap().is_plain());
        assert!(matches!(
            Profile::load("nope"),
            Err(ProfileError::Unknown(_))
        ));
    }

    /// A path that is not there is a missing file, named with the OS's reason; a bare word
    /// that is no built-in is still an unknown profile.
    #[test]
    fn a_missing_profile_file_is_not_an_unknown_profile() {
        let dir = tempfile::tempdir().unwrap();
        for missing in [
            dir.path().join("gone.yaml"),
            dir.path().join("gone"),
            std::path::PathBuf::from("gone.yml"),
        ] {
            let missing = missing.display().to_string();
            let err = Profile::load(&missing).unwrap_err();
            assert!(matches!(err, ProfileError::Read { .. }), "{missing}: {err}");
            let text = err.to_string();
            assert!(
                text.contains(&missing) && text.contains("No such file"),
                "{text}"
            );
        }
        let err = Profile::load("happpy").unwrap_err().to_string();
        assert!(err.starts_with("unknown profile \"happpy\""), "{err}");
    }

    #[test]
    fn bad_profiles_are_refused_with_the_problem_named() {
        let err = Profile::from_yaml(
            "x",
            "errors: [{reason: A, rate: 0.7}, {reason: B, rate: 0.6}]",
        )
        .unwrap_err();
        assert!(err.to_string().contains("add up"), "{err}");
        let err =
            Profile::from_yaml("x", "latency: {dist: uniform, min_ms: 5, max_ms: 1}").unwrap_err();
        assert!(err.to_string().contains("min_ms"), "{err}");
        let err = Profile::from_yaml("x", "stall: {rate: 2, ms: 1}").unwrap_err();
        assert!(err.to_string().contains("stall.rate"), "{err}");
        assert!(Profile::from_yaml("x", "surprise: 1").is_err());
    }

    #[test]
    fn windows_open_and_repeat() {
        let w = Window {
            start_ms: 100,
            duration_ms: 50,
            every_ms: Some(1000),
        };
        let at = Duration::from_millis;
        assert!(!w.is_open(at(99)));
        assert!(w.is_open(at(100)));
        assert!(!w.is_open(at(150)));
        assert!(w.is_open(at(1120)));
    }

    #[test]
    fn seeded_error_mix_is_reproducible_and_near_its_rates() {
        let profile = Profile {
            seed: Some(7),
            errors: vec![
                ErrorRate {
                    reason: "A".into(),
                    rate: 0.1,
                },
                ErrorRate {
                    reason: "B".into(),
                    rate: 0.2,
                },
            ],
            ..Profile::default()
        };
        let run = || {
            let f = Faults::new(profile.clone());
            (0..10_000).map(|_| f.scripted()).collect::<Vec<_>>()
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b);
        let count = |r: &str| {
            a.iter()
                .filter(|s| **s == Some(Scripted::Error(r.into())))
                .count()
        };
        assert!((800..1200).contains(&count("A")), "{}", count("A"));
        assert!((1700..2300).contains(&count("B")), "{}", count("B"));
    }

    #[test]
    fn latency_draws_stay_in_their_distribution() {
        let f = Faults::new(Profile {
            seed: Some(1),
            latency: Latency::Uniform {
                min_ms: 2.0,
                max_ms: 4.0,
            },
            ..Profile::default()
        });
        for _ in 0..1000 {
            let d = f.latency().unwrap();
            assert!(
                d >= Duration::from_millis(2) && d <= Duration::from_millis(4),
                "{d:?}"
            );
        }
        let f = Faults::new(Profile {
            seed: Some(1),
            latency: Latency::LogNormal {
                median_ms: 10.0,
                sigma: 0.5,
            },
            ..Profile::default()
        });
        let mut draws: Vec<f64> = (0..2001)
            .map(|_| f.latency().unwrap().as_secs_f64() * 1000.0)
            .collect();
        draws.sort_by(f64::total_cmp);
        let median = draws[1000];
        assert!((9.0..11.0).contains(&median), "{median}");
    }
}
