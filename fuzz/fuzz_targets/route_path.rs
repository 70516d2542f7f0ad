//! `route::parse` on any `:path`: never panics, and what it accepts is safe to use (a
//! model name that passes validation, a version of 1 to 19 digits, a pool-manager path
//! under the route prefix); errors are 400 or 404 with a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mm_filter::route::{self, Route, MAX_VERSION_DIGITS};

fuzz_target!(|path: &[u8]| {
    match route::parse(path) {
        Ok(Route::Model { name, version, .. }) => {
            assert!(mm_wire::validate_model_name(&name).is_ok(), "{name:?}");
            if let Some(v) = &version {
                assert!((1..=MAX_VERSION_DIGITS).contains(&v.len()), "{v:?}");
                assert!(v.bytes().all(|b| b.is_ascii_digit()), "{v:?}");
            }
            let call = route::pool_manager_path_for(Some(&name));
            assert!(call.starts_with(mm_wire::ROUTE_PATH_PREFIX), "{call}");
            assert!(!call.contains(['?', '#', '%', ' ']), "{call}");
        }
        Ok(Route::Server) => {}
        Err(err) => {
            assert!(matches!(err.status(), 400 | 404));
            assert!(!err.to_string().is_empty());
        }
    }
    if let Ok(name) = std::str::from_utf8(path) {
        let _ = route::is_reserved_header(name);
    }
});
