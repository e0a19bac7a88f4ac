//! Statement parameters written the way each backend binds them fastest.

use crate::Backend;

/// Writes a statement's parameters in the form each backend handles best. PostgreSQL needs
/// `$1, $2, ...`. On SQLite every parameter is an anonymous `?`, bound in the order written:
/// sqlx finds a named parameter's argument by asking SQLite for its name, a linear scan of the
/// statement's names, which made binding a 50-key upload quadratic (9% of the writer's time).
/// Every parameter of a statement must come from one `Params`, in binding order.
pub(crate) struct Params {
    numbered: bool,
    next: usize,
}

impl Params {
    pub(crate) fn new(backend: Backend) -> Self {
        Self {
            numbered: backend == Backend::Postgres,
            next: 1,
        }
    }

    /// The next parameter.
    pub(crate) fn one(&mut self) -> String {
        if self.numbered {
            self.next += 1;
            format!("${}", self.next - 1)
        } else {
            "?".to_owned()
        }
    }

    /// The next `count` parameters, comma-separated.
    pub(crate) fn many(&mut self, count: usize) -> String {
        (0..count)
            .map(|_| self.one())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
