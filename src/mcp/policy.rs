//! The access policy every tool call passes (DESIGN.md, "Security is a
//! layer"): role rules, then per-principal token buckets. Pure logic, no
//! I/O, so the planner's tool layer ([`crate::planner::AuditedPool`]) asks
//! it before calling and records what it says.
//!
//! Roles are checked first so a refused call spends no tokens. Limits are
//! checked tool first, then server: a call refused by its server's bucket
//! has already spent a token of its tool's bucket (governor has no
//! all-or-nothing check over two limiters); this only errs on the strict
//! side.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::access::{AccessSpec, Caller, ADMIN_ROLE};

/// What the policy says about one call. The texts are for the model to
/// relay to the caller, so they are polite and say what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Denied(String),
    RateLimited(String),
}

/// Which tools a rule or a limit covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// `server__tool`.
    Tool(String),
    /// Every tool of a server (`server__*`, or a limit's `server`).
    Server(String),
}

impl Scope {
    fn parse_tool(pattern: &str) -> Self {
        match pattern.strip_suffix("__*") {
            Some(server) => Scope::Server(server.to_string()),
            None => Scope::Tool(pattern.to_string()),
        }
    }

    fn covers(&self, server: &str, name: &str) -> bool {
        match self {
            Scope::Tool(t) => t == name,
            Scope::Server(s) => s == server,
        }
    }
}

#[derive(Debug)]
struct RoleRule {
    scope: Scope,
    admin_only: bool,
    roles: Vec<String>,
    deny_roles: Vec<String>,
    sensitive: bool,
}

impl RoleRule {
    fn allows(&self, role: &str) -> bool {
        !self.deny_roles.iter().any(|r| r == role)
            && (!self.admin_only || role == ADMIN_ROLE)
            && (self.roles.is_empty() || self.roles.iter().any(|r| r == role))
    }
}

struct Limit {
    scope: Scope,
    calls: NonZeroU32,
    per: Duration,
    /// One bucket per principal. Principals come from the keyring (or are
    /// the one `anonymous`), so the map cannot be grown by callers.
    buckets: DefaultKeyedRateLimiter<String>,
}

/// The rules of one pipeline; shared by every session (the buckets must be,
/// or a caller could reset them by reconnecting).
pub struct Policy {
    rules: Vec<RoleRule>,
    limits: Vec<Limit>,
    clock: DefaultClock,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("rules", &self.rules)
            .field("limits", &self.limits.len())
            .finish()
    }
}

impl Default for Policy {
    /// Everything allowed, nothing limited.
    fn default() -> Self {
        Self::new(&AccessSpec::default())
    }
}

impl Policy {
    /// The rules of an `[access]` table (validated when the spec loaded:
    /// `per_secs` is at least 1).
    pub fn new(spec: &AccessSpec) -> Self {
        let rules = spec
            .tool
            .iter()
            .map(|r| RoleRule {
                scope: Scope::parse_tool(&r.tool),
                admin_only: r.admin_only,
                roles: r.roles.clone(),
                deny_roles: r.deny_roles.clone(),
                sensitive: r.sensitive,
            })
            .collect();
        let limits = spec
            .limit
            .iter()
            .map(|l| {
                let scope = match (&l.tool, &l.server) {
                    (Some(tool), _) => Scope::parse_tool(tool),
                    (None, Some(server)) => Scope::Server(server.clone()),
                    (None, None) => Scope::Server(String::new()),
                };
                let per = Duration::from_secs(l.per_secs.max(1));
                // One token back every per/calls; a full bucket holds `calls`.
                let period = (per / l.calls.get()).max(Duration::from_nanos(1));
                let quota = Quota::with_period(period)
                    .expect("a non-zero period")
                    .allow_burst(l.calls);
                Limit {
                    scope,
                    calls: l.calls,
                    per,
                    buckets: RateLimiter::keyed(quota),
                }
            })
            .collect();
        Self {
            rules,
            limits,
            clock: DefaultClock::default(),
        }
    }

    /// Whether `role` may call `name` (of `server`) at all; used to offer
    /// the model only the tools its caller may use.
    pub fn permits(&self, role: &str, server: &str, name: &str) -> bool {
        self.rules
            .iter()
            .filter(|r| r.scope.covers(server, name))
            .all(|r| r.allows(role))
    }

    /// Whether a rule marks `name` (of `server`) `sensitive`: it needs the
    /// caller's confirmation once untrusted text is in the context.
    pub fn is_sensitive(&self, server: &str, name: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.sensitive && r.scope.covers(server, name))
    }

    /// Decide one call of `name` (of `server`) by `caller`, spending a
    /// token from each bucket that covers it when allowed.
    pub fn check(&self, caller: &Caller, server: &str, name: &str) -> Verdict {
        if !self.permits(&caller.role, server, name) {
            return Verdict::Denied(format!(
                "Permission denied: the tool {name} is not available to callers with the role \
                 \"{}\". Tell the caller you cannot do this for them; someone with the right \
                 role can.",
                caller.role
            ));
        }
        // Tool buckets before server buckets (see the module docs).
        let ordered = self
            .limits
            .iter()
            .filter(|l| matches!(l.scope, Scope::Tool(_)))
            .chain(
                self.limits
                    .iter()
                    .filter(|l| matches!(l.scope, Scope::Server(_))),
            );
        for limit in ordered.filter(|l| l.scope.covers(server, name)) {
            if let Err(not_until) = limit.buckets.check_key(&caller.principal) {
                let wait = not_until.wait_time_from(self.clock.now());
                let what = match &limit.scope {
                    Scope::Tool(_) => format!("the tool {name}"),
                    Scope::Server(s) => format!("the {s} tools"),
                };
                return Verdict::RateLimited(format!(
                    "Rate limit reached: {what} may be called at most {} times every {} s per \
                     caller. Tell the caller to try again in about {} s.",
                    limit.calls,
                    limit.per.as_secs(),
                    wait.as_secs().max(1)
                ));
            }
        }
        Verdict::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{LimitRule, ToolRule};

    fn caller(principal: &str, role: &str) -> Caller {
        Caller {
            principal: principal.into(),
            role: role.into(),
            session: None,
        }
    }

    fn rule(tool: &str) -> ToolRule {
        ToolRule {
            tool: tool.into(),
            admin_only: false,
            roles: vec![],
            deny_roles: vec![],
            sensitive: false,
        }
    }

    #[test]
    fn sensitive_is_by_tool_or_server_and_does_not_restrict_roles() {
        let spec = AccessSpec {
            tool: vec![
                ToolRule {
                    sensitive: true,
                    ..rule("orders__cancel_order")
                },
                ToolRule {
                    sensitive: true,
                    ..rule("payments__*")
                },
            ],
            limit: vec![],
        };
        let p = Policy::new(&spec);
        assert!(p.is_sensitive("orders", "orders__cancel_order"));
        assert!(p.is_sensitive("payments", "payments__refund"));
        assert!(!p.is_sensitive("orders", "orders__get_order"));
        assert!(p.permits("caller", "orders", "orders__cancel_order"));
    }

    fn limit(tool: Option<&str>, server: Option<&str>, calls: u32) -> LimitRule {
        LimitRule {
            tool: tool.map(Into::into),
            server: server.map(Into::into),
            calls: NonZeroU32::new(calls).unwrap(),
            per_secs: 60,
        }
    }

    #[test]
    fn no_rules_allow_everything() {
        let p = Policy::default();
        assert_eq!(
            p.check(&caller("a", "caller"), "orders", "orders__cancel_order"),
            Verdict::Allow
        );
    }

    #[test]
    fn admin_only_roles_and_deny_lists() {
        let spec = AccessSpec {
            tool: vec![
                ToolRule {
                    admin_only: true,
                    ..rule("orders__cancel_order")
                },
                ToolRule {
                    roles: vec!["agent".into(), "admin".into()],
                    ..rule("orders__get_customer")
                },
                ToolRule {
                    deny_roles: vec!["guest".into()],
                    ..rule("orders__*")
                },
            ],
            limit: vec![],
        };
        let p = Policy::new(&spec);
        let (o, cancel, cust, get) = (
            "orders",
            "orders__cancel_order",
            "orders__get_customer",
            "orders__get_order",
        );
        assert!(p.permits("admin", o, cancel));
        assert!(!p.permits("caller", o, cancel));
        assert!(p.permits("agent", o, cust));
        assert!(!p.permits("caller", o, cust));
        assert!(p.permits("caller", o, get));
        assert!(!p.permits("guest", o, get));
        assert!(p.permits("guest", "knowledge", "knowledge__search"));
        match p.check(&caller("bob", "caller"), o, cancel) {
            Verdict::Denied(text) => {
                assert!(
                    text.contains("orders__cancel_order") && text.contains("\"caller\""),
                    "{text}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tool_buckets_are_per_principal() {
        let spec = AccessSpec {
            tool: vec![],
            limit: vec![limit(Some("orders__get_order"), None, 2)],
        };
        let p = Policy::new(&spec);
        let (alice, bob) = (caller("alice", "caller"), caller("bob", "caller"));
        let get = |c: &Caller| p.check(c, "orders", "orders__get_order");
        assert_eq!(get(&alice), Verdict::Allow);
        assert_eq!(get(&alice), Verdict::Allow);
        match get(&alice) {
            Verdict::RateLimited(text) => assert!(
                text.contains("at most 2 times every 60 s") && text.contains("try again in about"),
                "{text}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(get(&bob), Verdict::Allow, "bob has his own bucket");
        // Other tools are not limited by this bucket.
        assert_eq!(
            p.check(&alice, "orders", "orders__find_orders"),
            Verdict::Allow
        );
    }

    #[test]
    fn server_buckets_cover_all_its_tools() {
        let spec = AccessSpec {
            tool: vec![],
            limit: vec![limit(None, Some("orders"), 2)],
        };
        let p = Policy::new(&spec);
        let a = caller("alice", "caller");
        assert_eq!(p.check(&a, "orders", "orders__get_order"), Verdict::Allow);
        assert_eq!(p.check(&a, "orders", "orders__find_orders"), Verdict::Allow);
        assert!(matches!(
            p.check(&a, "orders", "orders__get_customer"),
            Verdict::RateLimited(t) if t.contains("the orders tools")
        ));
        assert_eq!(
            p.check(&a, "knowledge", "knowledge__search"),
            Verdict::Allow
        );
    }

    #[test]
    fn denied_calls_spend_no_tokens() {
        let spec = AccessSpec {
            tool: vec![ToolRule {
                admin_only: true,
                ..rule("orders__cancel_order")
            }],
            limit: vec![limit(None, Some("orders"), 1)],
        };
        let p = Policy::new(&spec);
        let bob = caller("bob", "caller");
        for _ in 0..3 {
            assert!(matches!(
                p.check(&bob, "orders", "orders__cancel_order"),
                Verdict::Denied(_)
            ));
        }
        assert_eq!(p.check(&bob, "orders", "orders__get_order"), Verdict::Allow);
    }
}
