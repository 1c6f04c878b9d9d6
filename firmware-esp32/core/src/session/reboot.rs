//! Rebooting: a `reboot` command's plan, when a reboot is due, the wait for the
//! reports and the result it must not cut off, and what is saved before it.

use crate::outbox::{self, Kind};
use crate::session::{Event, Link, Now, Out, Output, RebootKind, Session, Writes, REBOOT_FLUSH_MS};

/// A reboot a `reboot` command scheduled.
pub(super) struct PlannedReboot {
    pub cid: String,
    pub at: u64,
}

impl Session {
    /// A reboot due now: the OTA agent's, or a command's once its delay passed.
    pub(super) fn reboot_due(&self, now: Now) -> Option<RebootKind> {
        let commanded = self.planned_reboot.as_ref().is_some_and(|p| p.at <= now.mono_ms);
        self.ota.reboot_pending().or(commanded.then_some(RebootKind::Command))
    }

    /// A reboot is coming (due or not): a token refresh can wait for the new boot.
    pub(super) fn reboot_pending(&self) -> bool {
        self.ota.reboot_pending().is_some() || self.planned_reboot.is_some()
    }

    /// End the link, save what must survive, reboot.
    pub(super) fn reboot(&mut self, kind: RebootKind, out: &mut Out) {
        self.end_link(out);
        let planned = self.planned_reboot.take();
        let result_acked = planned.as_ref().map(|p| !self.outbox.has_pending(&Kind::CmdResult { cid: p.cid.clone() }));
        out.event(Event::Rebooting { kind, cid: planned.map(|p| p.cid), result_acked });
        self.commands.save(&mut Writes(out));
        out.push(Output::Save { key: outbox::STORAGE_KEY.to_owned(), value: self.outbox.save() });
        out.push(Output::Reboot(kind));
        self.link = Link::Ended;
    }

    /// A due reboot waits until the OTA reports in flight and the `reboot` command's
    /// result are acknowledged, at most [`REBOOT_FLUSH_MS`].
    pub(super) fn reboot_when_flushed(&mut self, now: Now, out: &mut Out) {
        let Some(kind) = self.reboot_due(now) else { return };
        let result_pending = self
            .planned_reboot
            .as_ref()
            .is_some_and(|p| self.outbox.has_pending(&Kind::CmdResult { cid: p.cid.clone() }));
        let waiting = result_pending || self.outbox.has_pending(&Kind::OtaStatus);
        let Some(c) = self.conn() else { return };
        let by = *c.reboot_by.get_or_insert(now.mono_ms + REBOOT_FLUSH_MS);
        if !waiting || now.mono_ms >= by {
            self.reboot(kind, out);
        }
    }
}
