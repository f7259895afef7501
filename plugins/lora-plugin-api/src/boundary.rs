//! What actually crosses the boundary: the plugin's components wrapped so that
//! every call returns a `Result` and no panic ever leaves the plugin.
//!
//! A plugin and the host each link their own copy of the standard library, and
//! a panic unwinding out of one into the other is a *foreign exception* that
//! the other cannot catch: the process aborts. So panics are caught on the
//! plugin's side. [`export_plugin!`](crate::export_plugin) hands the plugin's
//! `register` a [`Registrar`] that wraps each component before it reaches the
//! host: the wrappers' code is compiled into the plugin (this crate is linked
//! into it), and each of their methods runs the plugin's code under
//! `catch_unwind` and returns the panic's message as an `Err`.
//!
//! Plugin authors never use this module; the host does.

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use crate::components::{
    Action, Augmentation, AugmentationEntry, Callback, CallbackEntry, Event, Finding, Image, Registrar, Rule,
    RuleEntry, RunInfo, Severity,
};
use crate::value::{ConfigView, Params};

/// An [`Augmentation`] as the host calls it.
pub trait GuardedAugmentation: Send + Sync {
    fn apply(&self, image: &mut Image<'_>, seed: u64) -> Result<(), String>;
}

/// A [`Rule`] as the host calls it.
pub trait GuardedRule: Send + Sync {
    fn check(&self, config: &ConfigView<'_>) -> Result<Vec<Finding>, String>;
}

/// A [`Callback`] as the host calls it.
pub trait GuardedCallback: Send {
    fn on_start(&mut self, run: &RunInfo) -> Result<(), String>;
    fn on_event(&mut self, event: &Event) -> Result<Action, String>;
}

/// A factory as the host calls it: `Err` for the plugin's own error or for a panic.
pub type GuardedFactory<T> = Box<dyn Fn(&Params) -> Result<Box<T>, String> + Send + Sync>;

pub struct GuardedAugmentationEntry {
    pub name: String,
    pub summary: String,
    pub build: GuardedFactory<dyn GuardedAugmentation>,
}

pub struct GuardedRuleEntry {
    pub id: String,
    pub severity: Severity,
    pub summary: String,
    pub doc: String,
    pub rule: Box<dyn GuardedRule>,
}

pub struct GuardedCallbackEntry {
    pub name: String,
    pub summary: String,
    pub build: GuardedFactory<dyn GuardedCallback>,
}

/// Implemented by the host: receives the wrapped components.
pub trait Host {
    fn augmentation(&mut self, entry: GuardedAugmentationEntry);
    fn rule(&mut self, entry: GuardedRuleEntry);
    fn callback(&mut self, entry: GuardedCallbackEntry);
}

thread_local! {
    /// Set while this thread runs plugin code under [`catch`]; the panic's location, once caught.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once) the plugin's panic hook: a panic inside [`catch`] is not
/// printed, its location is kept for the message instead (the host prints the
/// error); any other panic goes to the hook that was there before.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) {
                let at = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
                LOCATION.with(|l| *l.borrow_mut() = at);
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs plugin code, turning a panic into `Err("panicked at FILE:LINE:COLUMN: MESSAGE")`.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let outer = GUARDED.with(|g| g.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    result.map_err(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into());
        match LOCATION.with(|l| l.borrow_mut().take()) {
            Some(at) => format!("panicked at {at}: {what}"),
            None => format!("panicked: {what}"),
        }
    })
}

struct Guard<T: ?Sized>(Box<T>);

impl GuardedAugmentation for Guard<dyn Augmentation> {
    fn apply(&self, image: &mut Image<'_>, seed: u64) -> Result<(), String> {
        catch(|| self.0.apply(image, seed))
    }
}

impl GuardedRule for Guard<dyn Rule> {
    fn check(&self, config: &ConfigView<'_>) -> Result<Vec<Finding>, String> {
        catch(|| self.0.check(config))
    }
}

impl GuardedCallback for Guard<dyn Callback> {
    fn on_start(&mut self, run: &RunInfo) -> Result<(), String> {
        catch(|| self.0.on_start(run))?
    }

    fn on_event(&mut self, event: &Event) -> Result<Action, String> {
        catch(|| self.0.on_event(event))
    }
}

/// The [`Registrar`] a plugin's `register` receives: wraps every component for the host.
pub struct Wrapping<'a> {
    pub host: &'a mut dyn Host,
}

impl Registrar for Wrapping<'_> {
    fn augmentation(&mut self, entry: AugmentationEntry) {
        let build = entry.build;
        self.host.augmentation(GuardedAugmentationEntry {
            name: entry.name,
            summary: entry.summary,
            build: Box::new(move |params| {
                catch(|| build(params))?.map(|a| Box::new(Guard(a)) as Box<dyn GuardedAugmentation>)
            }),
        });
    }

    fn rule(&mut self, entry: RuleEntry) {
        self.host.rule(GuardedRuleEntry {
            id: entry.id,
            severity: entry.severity,
            summary: entry.summary,
            doc: entry.doc,
            rule: Box::new(Guard(entry.rule)),
        });
    }

    fn callback(&mut self, entry: CallbackEntry) {
        let build = entry.build;
        self.host.callback(GuardedCallbackEntry {
            name: entry.name,
            summary: entry.summary,
            build: Box::new(move |params| {
                catch(|| build(params))?.map(|c| Box::new(Guard(c)) as Box<dyn GuardedCallback>)
            }),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Got {
        augmentations: Vec<GuardedAugmentationEntry>,
        rules: Vec<GuardedRuleEntry>,
        callbacks: Vec<GuardedCallbackEntry>,
    }

    impl Host for Got {
        fn augmentation(&mut self, entry: GuardedAugmentationEntry) {
            self.augmentations.push(entry);
        }
        fn rule(&mut self, entry: GuardedRuleEntry) {
            self.rules.push(entry);
        }
        fn callback(&mut self, entry: GuardedCallbackEntry) {
            self.callbacks.push(entry);
        }
    }

    struct Boom;

    impl Augmentation for Boom {
        fn apply(&self, _: &mut Image<'_>, _: u64) {
            panic!("augmentation boom");
        }
    }

    impl Rule for Boom {
        fn check(&self, _: &ConfigView<'_>) -> Vec<Finding> {
            panic!("rule boom {}", 7);
        }
    }

    impl Callback for Boom {
        fn on_start(&mut self, run: &RunInfo) -> Result<(), String> {
            Err(format!("cannot write into {}", run.output_dir.display()))
        }
        fn on_event(&mut self, _: &Event) -> Action {
            panic!("callback boom");
        }
    }

    #[test]
    fn every_wrapped_call_returns_a_panic_as_an_error() {
        install_panic_hook();
        let mut got = Got::default();
        let mut wrapping = Wrapping { host: &mut got };
        let r: &mut dyn Registrar = &mut wrapping;
        r.augmentation(AugmentationEntry {
            name: "a".into(),
            summary: String::new(),
            build: Box::new(|p| match p.get("fail") {
                Some(_) => Err("bad params".into()),
                None => Ok(Box::new(Boom)),
            }),
        });
        r.rule(RuleEntry {
            id: "p::r".into(),
            severity: Severity::Warning,
            summary: String::new(),
            doc: String::new(),
            rule: Box::new(Boom),
        });
        r.callback(CallbackEntry {
            name: "c".into(),
            summary: String::new(),
            build: Box::new(|_| panic!("factory boom")),
        });
        r.callback(CallbackEntry {
            name: "d".into(),
            summary: String::new(),
            build: Box::new(|_| Ok(Box::new(Boom))),
        });

        let failing = Params::new(vec![("fail".into(), crate::Value::Boolean(true))]);
        assert_eq!((got.augmentations[0].build)(&failing).err().unwrap(), "bad params");
        let augmentation = (got.augmentations[0].build)(&Params::default()).unwrap();
        let mut pixels = [0.0f32; 4];
        let mut image = Image {
            channels: 1,
            height: 2,
            width: 2,
            pixels: &mut pixels,
        };
        let message = augmentation.apply(&mut image, 1).unwrap_err();
        assert!(
            message.starts_with("panicked at ") && message.ends_with(": augmentation boom"),
            "{message}"
        );

        let lookup = |_: &str| None;
        let view = ConfigView::new(&lookup);
        assert!(got.rules[0].rule.check(&view).unwrap_err().ends_with(": rule boom 7"));
        assert_eq!(got.rules[0].severity, Severity::Warning);

        let message = (got.callbacks[0].build)(&Params::default()).err().unwrap();
        assert!(message.ends_with(": factory boom"), "{message}");
        let mut callback = (got.callbacks[1].build)(&Params::default()).unwrap();
        let run = RunInfo {
            name: "r".into(),
            output_dir: "runs/r".into(),
        };
        assert_eq!(callback.on_start(&run).unwrap_err(), "cannot write into runs/r");
        let event = Event {
            kind: crate::EventKind::Step,
            step: 1,
            epoch: 0,
            loss: Some(1.0),
            metrics: Vec::new(),
        };
        let message = callback.on_event(&event).unwrap_err();
        assert!(
            message.starts_with(&format!("panicked at {}:", file!())) && message.ends_with(": callback boom"),
            "{message}"
        );
    }
}
