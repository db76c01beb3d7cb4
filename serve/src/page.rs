//! The search page: one self-contained HTML document (styles and script inline, no external
//! assets) that queries the JSON API. The current query lives in the URL (`?row=N`,
//! `?image=ID`, with `k`), so searches can be shared and the back button works.

/// The page served at `/`.
pub const PAGE_HTML: &str = include_str!("page.html");
