//! The Python and Node examples against a live server, and the proto lint.
