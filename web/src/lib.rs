//! The web pages Greenlight's master serves, embedded in the binary: no Node toolchain
//! is needed to build or run them. They read the JSON API.
//!
//! The status page is a few small static files put together at compile time, the way
//! rustdoc embeds its `main.js`, `settings.js` and `storage.js`: `assets/index.html` (the
//! stylesheet and the markup), then one `<script>` per file, in this order:
//! `assets/state.js` (how each shard and build is drawn, and formatting: pure functions),
//! `assets/live.js` (the data, fetching, the server-sent events, render coalescing),
//! `assets/views.js` (the views) and `assets/main.js` (the router and the start). No
//! bundler, no build step, and still one page at one route.
#![warn(missing_docs)]

/// The status page served at `/`.
pub const INDEX_HTML: &str = concat!(
    include_str!("../assets/index.html"),
    "<script>\n",
    include_str!("../assets/state.js"),
    "</script>\n<script>\n",
    include_str!("../assets/live.js"),
    "</script>\n<script>\n",
    include_str!("../assets/views.js"),
    "</script>\n<script>\n",
    include_str!("../assets/main.js"),
    "</script>\n</body>\n</html>\n",
);

#[cfg(test)]
mod tests {
    use super::INDEX_HTML;

    /// Each script is its own element: a file holding `</script` would end it early.
    #[test]
    fn the_page_is_the_markup_then_one_script_per_file() {
        let scripts = [
            include_str!("../assets/state.js"),
            include_str!("../assets/live.js"),
            include_str!("../assets/views.js"),
            include_str!("../assets/main.js"),
        ];
        for script in scripts {
            assert!(!script.to_ascii_lowercase().contains("</script"), "a script closes its own element");
            assert!(script.starts_with("\"use strict\";\n"), "every file is strict on its own");
        }
        assert!(INDEX_HTML.starts_with("<!doctype html>"));
        assert_eq!(INDEX_HTML.matches("<script>").count(), scripts.len());
        assert!(INDEX_HTML.ends_with("</script>\n</body>\n</html>\n"));
    }
}
