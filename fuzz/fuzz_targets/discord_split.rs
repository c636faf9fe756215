//! The Discord splitter: every part fits Discord's 2000 characters, is non-empty, and
//! nothing is lost. Built only with `--features alerts` (the splitter is on that branch).
#![no_main]

use analytics_service::alerts::split::split_message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let parts = split_message(text);
    for part in &parts {
        assert!(part.chars().count() <= 2000, "a part is over 2000 characters");
    }
    let kept: String = parts.concat().split_whitespace().collect();
    let sent: String = text.split_whitespace().collect();
    assert_eq!(kept, sent, "the parts lose or change text");
});
