//! Collects every error of one expansion, so a user sees them all at once.

#[derive(Default)]
pub(crate) struct Errors(Vec<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, e: syn::Error) {
        self.0.push(e);
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// All errors combined into one, or `None` when there were none.
    pub(crate) fn combined(self) -> Option<syn::Error> {
        self.0.into_iter().reduce(|mut all, e| {
            all.combine(e);
            all
        })
    }
}
