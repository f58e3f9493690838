//! The request budget: memory held for connections that do not hold the input slot
//! (their receive buffers, heads, call bodies, first records) is counted, in all, against
//! `Limits::request_budget`; past it those connections are not read (they are
//! *starved*) until others free some, and their deadlines still run.

use super::{Conn, Ctx, SMALL_RECV_SIZE, State, arm};

/// Memory a connection holds that counts against the request budget: the buffers of
/// what it has received and not yet done with, unless it holds the input slot (its body
/// is bounded by `--input_buffer` on its own, and it may stay as long as it likes).
fn holding(c: &Conn, owner: bool) -> usize {
    if owner {
        return 0;
    }
    c.buf.capacity()
        + match &c.state {
            State::Call { body, .. } => body.capacity(),
            State::Input(s) => s.body.capacity() + s.records.buffered(),
            _ => 0,
        }
}

/// Brings the budget's count up to date with connection `i`; once there is room again,
/// the connections that waited for it are read again.
pub(super) fn account(ctx: &mut Ctx<'_>, i: u32) {
    let owner = ctx.conns.input_owner == Some(i);
    if let Some(Some(c)) = ctx.conns.slots.get_mut(i as usize) {
        let now = holding(c, owner);
        ctx.conns.held = ctx.conns.held - c.held + now;
        c.held = now;
    }
    wake_starved(ctx);
}

/// Whether a connection that does not hold the input slot may have another receive in
/// flight: what is held, and what the receives in flight may bring, stay in the budget.
pub(super) fn budget_allows_recv(ctx: &Ctx<'_>) -> bool {
    ctx.conns.held + (ctx.conns.reading + 1) * SMALL_RECV_SIZE <= ctx.config.limits.request_budget
}

/// Reads again the connections that waited for the budget, once it has room.
pub(super) fn wake_starved(ctx: &mut Ctx<'_>) {
    if ctx.conns.starved.is_empty() || !budget_allows_recv(ctx) {
        return;
    }
    for j in std::mem::take(&mut ctx.conns.starved) {
        if let Some(Some(c)) = ctx.conns.slots.get_mut(j as usize) {
            c.starved = false;
            arm(ctx, j);
        }
    }
}
