//! Atomic Lua steps as Redis Functions (`FCALL`), with cached scripts (`EVALSHA`) where a server has none.
//!
//! A script sent with `EVALSHA` runs its whole chunk on every call: each helper function of the fragments it
//! is composed of is created anew before the body starts, a few µs of Redis CPU per call that grows with the
//! fragments. A Function library runs its chunk once, at `FUNCTION LOAD`; a call then runs only the body.
//! Measured on Redis 7.0 with the admission step (fast path, two candidates, back to back): 21-27 µs per
//! `EVALSHA`, 15-19 µs per `FCALL` (bench/README.md).

use std::sync::atomic::{AtomicU8, Ordering};

use redis::{ErrorKind, RedisError, ServerErrorKind, ToRedisArgs};

/// One atomic step: a prelude of helper definitions and a body using `KEYS` and `ARGV`, loadable both as a
/// Function library and as a script.
///
/// The library and function names carry the SHA-1 of the script, so replicas running different versions
/// of a step (a rolling upgrade) never replace each other's code; a library is a few KB and stays loaded.
pub struct StepFunction {
    script: redis::Script,
    source: String,
    library: String,
    function: String,
}

impl StepFunction {
    /// A step named `name` (letters, digits and `_`): `prelude` defines helpers, `body` is the step itself
    /// (it may `return` from its top level, read `KEYS` and `ARGV`, and must not assign globals).
    pub fn new(name: &str, prelude: &[&str], body: &str) -> StepFunction {
        let prelude = prelude.join("\n");
        let source = format!("{prelude}\n{body}");
        let script = redis::Script::new(&source);
        let version = &script.get_hash()[..16];
        let function = format!("{name}_{version}");
        let library = format!(
            "#!lua name=llm_scheduler_{function}\n{prelude}\nlocal function step(KEYS, ARGV)\n{body}\nend\n\
             redis.register_function('{function}', step)\n"
        );
        StepFunction {
            script,
            source,
            library,
            function,
        }
    }

    /// The name the step is called by with `FCALL`.
    pub fn function_name(&self) -> &str {
        &self.function
    }

    /// The source `FUNCTION LOAD` takes.
    pub fn library(&self) -> &str {
        &self.library
    }

    /// The same step as a script's source, for servers without Functions.
    pub fn script_source(&self) -> &str {
        &self.source
    }

    /// The script's SHA-1 (`EVALSHA`).
    pub fn script_hash(&self) -> &str {
        self.script.get_hash()
    }
}

/// The keys and arguments of one call of a [`StepFunction`].
#[derive(Debug, Default, Clone)]
pub struct StepCall {
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl StepCall {
    /// A call with no keys or arguments yet.
    pub fn new() -> StepCall {
        StepCall::default()
    }

    /// Appends a key (`KEYS[n]`).
    pub fn key(&mut self, key: impl ToRedisArgs) -> &mut StepCall {
        key.write_redis_args(&mut self.keys);
        self
    }

    /// Appends an argument (`ARGV[n]`).
    pub fn arg(&mut self, arg: impl ToRedisArgs) -> &mut StepCall {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// `FCALL function numkeys keys... args...`.
    pub(crate) fn fcall(&self, step: &StepFunction) -> redis::Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(&step.function)
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }

    /// `EVALSHA sha numkeys keys... args...`.
    pub(crate) fn evalsha(&self, step: &StepFunction) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(step.script.get_hash())
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }
}

/// Whether the server runs Functions, learnt from the first call and again after a reconnect might have
/// reached another server.
#[derive(Debug, Default)]
pub(crate) struct FunctionSupport(AtomicU8);

const UNKNOWN: u8 = 0;
const FUNCTIONS: u8 = 1;
const SCRIPTS: u8 = 2;

impl FunctionSupport {
    /// True unless the server is known to have no Functions.
    pub(crate) fn try_functions(&self) -> bool {
        self.0.load(Ordering::Relaxed) != SCRIPTS
    }

    pub(crate) fn set(&self, functions: bool) {
        self.0.store(
            if functions { FUNCTIONS } else { SCRIPTS },
            Ordering::Relaxed,
        );
    }

    /// Forgets what was learnt (a new connection may reach another server, e.g. after a failover).
    pub(crate) fn reset(&self) {
        self.0.store(UNKNOWN, Ordering::Relaxed);
    }
}

/// What a failed call asks for next.
pub(crate) enum Recovery {
    /// The server has Functions but not this library (it restarted empty or was flushed): load and retry.
    LoadLibrary,
    /// The server has no Functions (Redis < 7): use scripts.
    UseScripts,
    /// The script cache lacks the script: load and retry.
    LoadScript,
    /// Nothing to recover: the error stands.
    None,
}

/// Redis reports these cases only in the error's text (`ERR Function not found`, `ERR unknown command
/// 'FCALL'`); `NOSCRIPT` has its own code.
pub(crate) fn recovery(err: &RedisError) -> Recovery {
    match err.kind() {
        ErrorKind::Server(ServerErrorKind::NoScript) => return Recovery::LoadScript,
        // An ACL that allows scripts but not Functions.
        ErrorKind::Server(ServerErrorKind::NoPerm) => return Recovery::UseScripts,
        _ => {}
    }
    let detail = err.detail().unwrap_or_default().to_ascii_lowercase();
    if err.code() == Some("ERR") || err.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
    {
        if detail.contains("function not found") {
            return Recovery::LoadLibrary;
        }
        if detail.contains("unknown command") && detail.contains("fcall") {
            return Recovery::UseScripts;
        }
    }
    Recovery::None
}

/// `FUNCTION LOAD REPLACE <library>`: replaces only a library of the same name, which holds this exact
/// code (the name carries its hash).
pub(crate) fn load_library(step: &StepFunction) -> redis::Cmd {
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD").arg("REPLACE").arg(&step.library);
    cmd
}

/// `SCRIPT LOAD <source>`.
pub(crate) fn load_script(step: &StepFunction) -> redis::Cmd {
    let mut cmd = redis::cmd("SCRIPT");
    cmd.arg("LOAD").arg(&step.source);
    cmd
}
