//! The Discord splitter: blank text is refused; otherwise every part fits Discord's 2000
//! characters, and the parts' bodies, joined, are exactly the input (nothing lost).
#![no_main]

use analytics_service::alerts::split::{DISCORD_MESSAGE_LIMIT, split_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(parts) = split_message(text, DISCORD_MESSAGE_LIMIT) else {
        assert!(text.trim().is_empty(), "only blank text is refused");
        return;
    };
    for part in &parts {
        assert!(part.text.chars().count() <= DISCORD_MESSAGE_LIMIT, "a part is over the limit");
    }
    let joined: String = parts.iter().map(|p| &text[p.body.clone()]).collect();
    assert_eq!(joined, text, "the parts lose or change text");
});
