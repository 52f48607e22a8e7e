//! Crash points for the kill harnesses: in debug builds (the tests), setting
//! `BERTH_FAULT_POINT=<name>` makes the process abort when it reaches that
//! point — exactly what `kill -9` there would do. Release builds compile the
//! check away, so no setting can crash a production process.

#[inline]
pub fn point(name: &'static str) {
    #[cfg(debug_assertions)]
    {
        static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let armed = ARMED.get_or_init(|| std::env::var("BERTH_FAULT_POINT").ok());
        if armed.as_deref() == Some(name) {
            eprintln!("fault point {name} reached; aborting");
            std::process::abort();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
