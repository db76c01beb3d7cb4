//! dim-serve: an HTTP search service and web page over a dim-toolkit image collection. It
//! serves an index built by `dim-search build`, or embeds and indexes a folder first, and
//! answers k-NN searches by uploaded image, row or vector with thumbnails by row id.

pub mod api;
pub mod collection;
pub mod page;
pub mod prepare;
pub mod thumbnails;
