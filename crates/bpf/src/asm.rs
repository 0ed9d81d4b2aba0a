//! An eBPF assembler: instruction encoding and a builder with named labels.
//!
//! # Design
//!
//! An eBPF instruction is eight bytes, `struct bpf_insn { u8 code; u8 dst:4, src:4; s16 off;
//! s32 imm; }` (include/uapi/linux/bpf.h, Documentation/bpf/standardization/
//! instruction-set.rst). [`Insn`] holds those fields and [`Insn::encode`] packs them into the
//! `u64` whose in-memory bytes are the kernel's layout, which is what
//! `melange_sys::bpf::Program::load` takes. `ld_imm64` is the one instruction that takes two
//! slots; [`Insn::ld_imm64`] returns both.
//!
//! [`Asm`] appends instructions and resolves jumps to named labels when [`Asm::finish`] is
//! called, so a program can jump forward to an exit path it has not written yet. Jump offsets
//! count slots from the instruction after the jump, so a two-slot `ld_imm64` between a jump and
//! its target is counted twice, which is why offsets are computed from slot indices and never
//! by hand.
//!
//! The alternative, writing programs in restricted C and compiling them with clang, was
//! rejected because the build machines have no clang and because Melange's one XDP program is
//! small (about a hundred instructions) and generated from a spec: the control plane bakes
//! queue counts and policy into it as immediates. A text assembler was rejected too: a typed
//! builder catches a misspelt register at compile time and needs no parser.
//!
//! Safety contract: none needed; this module only produces numbers. Whether a program is safe
//! to run is the kernel verifier's call, and the tests load every program they build.

use std::collections::HashMap;

// The kernel layout of `struct bpf_insn` puts `dst_reg` in the low nibble of byte 1 only on
// little-endian machines; big-endian kernels swap the nibbles, which `encode` does not.
const _: () = assert!(cfg!(target_endian = "little"));

/// Instruction classes (the low three bits of the opcode).
pub mod class {
    /// Non-standard loads; only `ld_imm64` (with `BPF_IMM | BPF_DW`) is used.
    pub const LD: u8 = 0x00;
    /// Load from memory into a register.
    pub const LDX: u8 = 0x01;
    /// Store an immediate to memory.
    pub const ST: u8 = 0x02;
    /// Store a register to memory (and atomics).
    pub const STX: u8 = 0x03;
    /// 32-bit arithmetic (the upper half of the destination is zeroed).
    pub const ALU: u8 = 0x04;
    /// 64-bit jumps, calls and exit.
    pub const JMP: u8 = 0x05;
    /// Jumps that compare the low 32 bits.
    pub const JMP32: u8 = 0x06;
    /// 64-bit arithmetic.
    pub const ALU64: u8 = 0x07;
}

/// Operand source bit: immediate (`BPF_K`) or register (`BPF_X`).
const SRC_K: u8 = 0x00;
const SRC_X: u8 = 0x08;

/// Memory modes.
const MODE_IMM: u8 = 0x00;
const MODE_MEM: u8 = 0x60;
const MODE_ATOMIC: u8 = 0xc0;

/// `BPF_PSEUDO_MAP_FD`: the `src` of an `ld_imm64` whose immediate is a map descriptor the
/// verifier replaces with the map's address.
pub const PSEUDO_MAP_FD: u8 = 1;

/// `BPF_ADD` as the immediate of an atomic instruction (no fetch).
const ATOMIC_ADD: i32 = 0x00;

/// A register, `r0` to `r10`.
///
/// `r0` holds return values, `r1`-`r5` are arguments and are clobbered by calls, `r6`-`r9`
/// survive calls, `r10` is the read-only frame pointer (512 bytes of stack below it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reg(u8);

impl Reg {
    /// The register's number.
    pub const fn number(self) -> u8 {
        self.0
    }
}

/// Return value, and helper result.
pub const R0: Reg = Reg(0);
/// First argument; the program's context on entry.
pub const R1: Reg = Reg(1);
/// Second argument.
pub const R2: Reg = Reg(2);
/// Third argument.
pub const R3: Reg = Reg(3);
/// Fourth argument.
pub const R4: Reg = Reg(4);
/// Fifth argument.
pub const R5: Reg = Reg(5);
/// Callee-saved.
pub const R6: Reg = Reg(6);
/// Callee-saved.
pub const R7: Reg = Reg(7);
/// Callee-saved.
pub const R8: Reg = Reg(8);
/// Callee-saved.
pub const R9: Reg = Reg(9);
/// Frame pointer (read only).
pub const R10: Reg = Reg(10);

/// Access width of a load or store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// 1 byte (`BPF_B`).
    B,
    /// 2 bytes (`BPF_H`).
    H,
    /// 4 bytes (`BPF_W`).
    W,
    /// 8 bytes (`BPF_DW`).
    DW,
}

impl Size {
    const fn bits(self) -> u8 {
        match self {
            Self::W => 0x00,
            Self::H => 0x08,
            Self::B => 0x10,
            Self::DW => 0x18,
        }
    }
}

/// Arithmetic operations (the high four bits of an ALU opcode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AluOp {
    /// `dst += src`.
    Add,
    /// `dst -= src`.
    Sub,
    /// `dst *= src`.
    Mul,
    /// `dst /= src` (unsigned; division by zero yields 0).
    Div,
    /// `dst |= src`.
    Or,
    /// `dst &= src`.
    And,
    /// `dst <<= src`.
    Lsh,
    /// `dst >>= src` (logical).
    Rsh,
    /// `dst %= src` (unsigned).
    Mod,
    /// `dst ^= src`.
    Xor,
    /// `dst = src`.
    Mov,
    /// `dst >>= src` (arithmetic).
    Arsh,
}

impl AluOp {
    const fn bits(self) -> u8 {
        match self {
            Self::Add => 0x00,
            Self::Sub => 0x10,
            Self::Mul => 0x20,
            Self::Div => 0x30,
            Self::Or => 0x40,
            Self::And => 0x50,
            Self::Lsh => 0x60,
            Self::Rsh => 0x70,
            Self::Mod => 0x90,
            Self::Xor => 0xa0,
            Self::Mov => 0xb0,
            Self::Arsh => 0xc0,
        }
    }
}

/// Jump conditions (the high four bits of a JMP/JMP32 opcode). `dst <cond> src`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    /// `==`.
    Eq,
    /// `>` unsigned.
    Gt,
    /// `>=` unsigned.
    Ge,
    /// `dst & src != 0`.
    Set,
    /// `!=`.
    Ne,
    /// `>` signed.
    Sgt,
    /// `>=` signed.
    Sge,
    /// `<` unsigned.
    Lt,
    /// `<=` unsigned.
    Le,
    /// `<` signed.
    Slt,
    /// `<=` signed.
    Sle,
}

impl Cond {
    const fn bits(self) -> u8 {
        match self {
            Self::Eq => 0x10,
            Self::Gt => 0x20,
            Self::Ge => 0x30,
            Self::Set => 0x40,
            Self::Ne => 0x50,
            Self::Sgt => 0x60,
            Self::Sge => 0x70,
            Self::Lt => 0xa0,
            Self::Le => 0xb0,
            Self::Slt => 0xc0,
            Self::Sle => 0xd0,
        }
    }
}

const JMP_JA: u8 = 0x00;
const JMP_CALL: u8 = 0x80;
const JMP_EXIT: u8 = 0x90;
const ALU_END: u8 = 0xd0;
/// `BPF_TO_BE` in an `END` instruction: convert host order to big-endian.
const END_TO_BE: u8 = 0x08;

/// Kernel helper functions, by their stable ids (`enum bpf_func_id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Helper {
    /// `void *bpf_map_lookup_elem(map, key)`: pointer to the value or NULL.
    MapLookupElem,
    /// `long bpf_redirect_map(map, key, flags)`: `XDP_REDIRECT` if `key` is present, else the
    /// low two bits of `flags` (an XDP action).
    RedirectMap,
    /// Any other helper, by id.
    Id(i32),
}

impl Helper {
    /// The helper's id, the immediate of the `call` instruction.
    pub const fn id(self) -> i32 {
        match self {
            Self::MapLookupElem => 1,
            Self::RedirectMap => 51,
            Self::Id(id) => id,
        }
    }
}

/// One eBPF instruction slot, in fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Opcode: class, size/source and operation bits.
    pub code: u8,
    /// Destination register number (0-10).
    pub dst: u8,
    /// Source register number (0-10), or a pseudo source such as [`PSEUDO_MAP_FD`].
    pub src: u8,
    /// Signed offset: memory displacement or jump distance in slots.
    pub off: i16,
    /// Signed immediate.
    pub imm: i32,
}

impl Insn {
    /// Packs the instruction into the kernel's layout: the returned `u64`'s little-endian
    /// bytes are `code`, `src << 4 | dst`, `off` (LE), `imm` (LE).
    pub const fn encode(self) -> u64 {
        u64::from_le_bytes(self.to_bytes())
    }

    /// The instruction's eight bytes, as the kernel reads them.
    pub const fn to_bytes(self) -> [u8; 8] {
        let off = self.off.to_le_bytes();
        let imm = self.imm.to_le_bytes();
        [
            self.code,
            (self.src << 4) | (self.dst & 0x0f),
            off[0],
            off[1],
            imm[0],
            imm[1],
            imm[2],
            imm[3],
        ]
    }

    /// Unpacks [`Insn::encode`]'s output.
    pub const fn decode(raw: u64) -> Self {
        let b = raw.to_le_bytes();
        Self {
            code: b[0],
            dst: b[1] & 0x0f,
            src: b[1] >> 4,
            off: i16::from_le_bytes([b[2], b[3]]),
            imm: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    const fn new(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Self {
        Self {
            code,
            dst: dst.0,
            src: src.0,
            off,
            imm,
        }
    }

    /// `dst = dst <op> imm` on 64 bits (`imm` sign-extended).
    pub const fn alu64_imm(op: AluOp, dst: Reg, imm: i32) -> Self {
        Self::new(class::ALU64 | SRC_K | op.bits(), dst, R0, 0, imm)
    }

    /// `dst = dst <op> src` on 64 bits.
    pub const fn alu64_reg(op: AluOp, dst: Reg, src: Reg) -> Self {
        Self::new(class::ALU64 | SRC_X | op.bits(), dst, src, 0, 0)
    }

    /// `dst = (u32)dst <op> imm`, upper half zeroed.
    pub const fn alu32_imm(op: AluOp, dst: Reg, imm: i32) -> Self {
        Self::new(class::ALU | SRC_K | op.bits(), dst, R0, 0, imm)
    }

    /// `dst = (u32)dst <op> (u32)src`, upper half zeroed.
    pub const fn alu32_reg(op: AluOp, dst: Reg, src: Reg) -> Self {
        Self::new(class::ALU | SRC_X | op.bits(), dst, src, 0, 0)
    }

    /// `dst = htobe<bits>(dst)` (`bits` is 16, 32 or 64): on a little-endian host, swaps
    /// the low `bits` bits and zeroes the rest.
    pub const fn to_be(dst: Reg, bits: i32) -> Self {
        Self::new(class::ALU | END_TO_BE | ALU_END, dst, R0, 0, bits)
    }

    /// `dst = *(size *)(src + off)`, zero-extended.
    pub const fn ldx(size: Size, dst: Reg, src: Reg, off: i16) -> Self {
        Self::new(class::LDX | MODE_MEM | size.bits(), dst, src, off, 0)
    }

    /// `*(size *)(dst + off) = src`.
    pub const fn stx(size: Size, dst: Reg, off: i16, src: Reg) -> Self {
        Self::new(class::STX | MODE_MEM | size.bits(), dst, src, off, 0)
    }

    /// `*(size *)(dst + off) = imm`.
    pub const fn st_imm(size: Size, dst: Reg, off: i16, imm: i32) -> Self {
        Self::new(class::ST | MODE_MEM | size.bits(), dst, R0, off, imm)
    }

    /// `lock *(size *)(dst + off) += src` (`size` is [`Size::W`] or [`Size::DW`]).
    pub const fn atomic_add(size: Size, dst: Reg, off: i16, src: Reg) -> Self {
        Self::new(
            class::STX | MODE_ATOMIC | size.bits(),
            dst,
            src,
            off,
            ATOMIC_ADD,
        )
    }

    /// `if dst <cond> imm goto +off` (64-bit compare, `imm` sign-extended).
    pub const fn jmp_imm(cond: Cond, dst: Reg, imm: i32, off: i16) -> Self {
        Self::new(class::JMP | SRC_K | cond.bits(), dst, R0, off, imm)
    }

    /// `if dst <cond> src goto +off` (64-bit compare).
    pub const fn jmp_reg(cond: Cond, dst: Reg, src: Reg, off: i16) -> Self {
        Self::new(class::JMP | SRC_X | cond.bits(), dst, src, off, 0)
    }

    /// `if (u32)dst <cond> imm goto +off`.
    pub const fn jmp32_imm(cond: Cond, dst: Reg, imm: i32, off: i16) -> Self {
        Self::new(class::JMP32 | SRC_K | cond.bits(), dst, R0, off, imm)
    }

    /// `goto +off`.
    pub const fn ja(off: i16) -> Self {
        Self::new(class::JMP | JMP_JA, R0, R0, off, 0)
    }

    /// `call helper`: arguments in `r1`-`r5`, result in `r0`, `r1`-`r5` clobbered.
    pub const fn call(helper: Helper) -> Self {
        Self::new(class::JMP | JMP_CALL, R0, R0, 0, helper.id())
    }

    /// `exit`: return `r0`.
    pub const fn exit() -> Self {
        Self::new(class::JMP | JMP_EXIT, R0, R0, 0, 0)
    }

    /// `dst = imm` for a full 64-bit immediate: two slots.
    pub const fn ld_imm64(dst: Reg, imm: u64) -> [Self; 2] {
        [
            Self::new(
                class::LD | MODE_IMM | Size::DW.bits(),
                dst,
                R0,
                0,
                imm as u32 as i32,
            ),
            Self::new(0, R0, R0, 0, (imm >> 32) as u32 as i32),
        ]
    }

    /// `dst = &map` for the map whose descriptor is `fd` (`BPF_PSEUDO_MAP_FD`): two slots.
    /// The verifier checks the descriptor and substitutes the map's address.
    pub const fn ld_map_fd(dst: Reg, fd: i32) -> [Self; 2] {
        [
            Self {
                code: class::LD | MODE_IMM | Size::DW.bits(),
                dst: dst.0,
                src: PSEUDO_MAP_FD,
                off: 0,
                imm: fd,
            },
            Self::new(0, R0, R0, 0, 0),
        ]
    }
}

/// Errors of [`Asm::finish`]. All are bugs in the program generator: fix the generator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    /// A jump names a label that was never placed.
    #[error("jump to unknown label {0:?}")]
    UnknownLabel(String),
    /// The same label was placed twice.
    #[error("label {0:?} placed twice")]
    DuplicateLabel(String),
    /// A jump's target is further than an `i16` of slots away; split the program or move the
    /// target closer.
    #[error("jump to {label:?} needs offset {offset}, outside -32768..=32767")]
    JumpOutOfRange {
        /// The target label.
        label: String,
        /// The offset that would have been needed.
        offset: i64,
    },
}

/// A program under construction: instructions plus unresolved jumps to named labels.
///
/// Call order: any number of instruction and [`Asm::label`] calls, then [`Asm::finish`] once.
#[derive(Debug, Default, Clone)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: HashMap<String, usize>,
    /// `(slot of the jump, target label)`.
    fixups: Vec<(usize, String)>,
    /// The first error found while building, reported by `finish`.
    error: Option<AsmError>,
}

impl Asm {
    /// An empty program.
    pub fn new() -> Self {
        Self::default()
    }

    /// Slots written so far (an `ld_imm64` counts two).
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// Appends one instruction slot as is.
    pub fn push(&mut self, insn: Insn) -> &mut Self {
        self.insns.push(insn);
        self
    }

    /// Places `name` at the next instruction. Jumps to it may come before or after.
    pub fn label(&mut self, name: &str) -> &mut Self {
        if self
            .labels
            .insert(name.to_owned(), self.insns.len())
            .is_some()
            && self.error.is_none()
        {
            self.error = Some(AsmError::DuplicateLabel(name.to_owned()));
        }
        self
    }

    fn jump_to(&mut self, insn: Insn, label: &str) -> &mut Self {
        self.fixups.push((self.insns.len(), label.to_owned()));
        self.push(insn)
    }

    /// `dst = imm` (64-bit, sign-extended).
    pub fn mov64_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(Insn::alu64_imm(AluOp::Mov, dst, imm))
    }

    /// `dst = src` (64-bit).
    pub fn mov64(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.push(Insn::alu64_reg(AluOp::Mov, dst, src))
    }

    /// `dst = dst <op> imm` (64-bit).
    pub fn alu64_imm(&mut self, op: AluOp, dst: Reg, imm: i32) -> &mut Self {
        self.push(Insn::alu64_imm(op, dst, imm))
    }

    /// `dst = dst <op> src` (64-bit).
    pub fn alu64(&mut self, op: AluOp, dst: Reg, src: Reg) -> &mut Self {
        self.push(Insn::alu64_reg(op, dst, src))
    }

    /// `dst = (u32)dst <op> imm`.
    pub fn alu32_imm(&mut self, op: AluOp, dst: Reg, imm: i32) -> &mut Self {
        self.push(Insn::alu32_imm(op, dst, imm))
    }

    /// `dst = htobe<bits>(dst)`.
    pub fn to_be(&mut self, dst: Reg, bits: i32) -> &mut Self {
        self.push(Insn::to_be(dst, bits))
    }

    /// `dst = *(size *)(src + off)`.
    pub fn ldx(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Self {
        self.push(Insn::ldx(size, dst, src, off))
    }

    /// `*(size *)(dst + off) = src`.
    pub fn stx(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Self {
        self.push(Insn::stx(size, dst, off, src))
    }

    /// `*(size *)(dst + off) = imm`.
    pub fn st_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) -> &mut Self {
        self.push(Insn::st_imm(size, dst, off, imm))
    }

    /// `lock *(size *)(dst + off) += src`.
    pub fn atomic_add(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Self {
        self.push(Insn::atomic_add(size, dst, off, src))
    }

    /// `if dst <cond> imm goto label`.
    pub fn jmp_imm(&mut self, cond: Cond, dst: Reg, imm: i32, label: &str) -> &mut Self {
        self.jump_to(Insn::jmp_imm(cond, dst, imm, 0), label)
    }

    /// `if dst <cond> src goto label`.
    pub fn jmp_reg(&mut self, cond: Cond, dst: Reg, src: Reg, label: &str) -> &mut Self {
        self.jump_to(Insn::jmp_reg(cond, dst, src, 0), label)
    }

    /// `if (u32)dst <cond> imm goto label`.
    pub fn jmp32_imm(&mut self, cond: Cond, dst: Reg, imm: i32, label: &str) -> &mut Self {
        self.jump_to(Insn::jmp32_imm(cond, dst, imm, 0), label)
    }

    /// `goto label`.
    pub fn ja(&mut self, label: &str) -> &mut Self {
        self.jump_to(Insn::ja(0), label)
    }

    /// `call helper`.
    pub fn call(&mut self, helper: Helper) -> &mut Self {
        self.push(Insn::call(helper))
    }

    /// `exit`.
    pub fn exit(&mut self) -> &mut Self {
        self.push(Insn::exit())
    }

    /// `dst = imm` (64-bit immediate, two slots).
    pub fn ld_imm64(&mut self, dst: Reg, imm: u64) -> &mut Self {
        let [a, b] = Insn::ld_imm64(dst, imm);
        self.push(a).push(b)
    }

    /// `dst = &map` for map descriptor `fd` (two slots).
    pub fn ld_map_fd(&mut self, dst: Reg, fd: i32) -> &mut Self {
        let [a, b] = Insn::ld_map_fd(dst, fd);
        self.push(a).push(b)
    }

    /// Resolves every jump and returns the encoded program.
    ///
    /// # Errors
    ///
    /// [`AsmError`] for an unknown or duplicate label or an offset that does not fit `i16`.
    pub fn finish(mut self) -> Result<Vec<u64>, AsmError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        for (slot, label) in &self.fixups {
            let target = *self
                .labels
                .get(label)
                .ok_or_else(|| AsmError::UnknownLabel(label.clone()))?;
            // Offsets are relative to the slot after the jump.
            let offset = target as i64 - (*slot as i64 + 1);
            let off = i16::try_from(offset).map_err(|_| AsmError::JumpOutOfRange {
                label: label.clone(),
                offset,
            })?;
            self.insns[*slot].off = off;
        }
        Ok(self.insns.iter().map(|i| i.encode()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(raw: u64) -> String {
        raw.to_le_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Golden encodings, as `llvm-objdump -d` prints them for the same instructions.
    #[test]
    fn golden_encodings() {
        let cases: &[(Insn, &str)] = &[
            (
                Insn::alu64_imm(AluOp::Mov, R0, 2),
                "b7 00 00 00 02 00 00 00",
            ),
            (Insn::exit(), "95 00 00 00 00 00 00 00"),
            (
                Insn::alu64_reg(AluOp::Mov, R6, R1),
                "bf 16 00 00 00 00 00 00",
            ),
            (Insn::ldx(Size::W, R2, R1, 0), "61 12 00 00 00 00 00 00"),
            (Insn::ldx(Size::W, R3, R1, 4), "61 13 04 00 00 00 00 00"),
            (Insn::ldx(Size::H, R5, R2, 12), "69 25 0c 00 00 00 00 00"),
            (Insn::ldx(Size::B, R5, R2, 23), "71 25 17 00 00 00 00 00"),
            (Insn::ldx(Size::DW, R1, R10, -8), "79 a1 f8 ff 00 00 00 00"),
            (Insn::stx(Size::DW, R10, -8, R1), "7b 1a f8 ff 00 00 00 00"),
            (Insn::stx(Size::W, R10, -4, R7), "63 7a fc ff 00 00 00 00"),
            (
                Insn::st_imm(Size::W, R10, -16, 64),
                "62 0a f0 ff 40 00 00 00",
            ),
            (
                Insn::alu64_imm(AluOp::Add, R4, 14),
                "07 04 00 00 0e 00 00 00",
            ),
            (
                Insn::alu64_imm(AluOp::Add, R2, -4),
                "07 02 00 00 fc ff ff ff",
            ),
            (
                Insn::alu64_reg(AluOp::Add, R4, R5),
                "0f 54 00 00 00 00 00 00",
            ),
            (
                Insn::alu64_imm(AluOp::And, R5, 0x0f),
                "57 05 00 00 0f 00 00 00",
            ),
            (
                Insn::alu64_imm(AluOp::Lsh, R5, 2),
                "67 05 00 00 02 00 00 00",
            ),
            (
                Insn::alu64_imm(AluOp::Rsh, R5, 4),
                "77 05 00 00 04 00 00 00",
            ),
            (
                Insn::alu64_imm(AluOp::Mul, R2, 64),
                "27 02 00 00 40 00 00 00",
            ),
            (
                Insn::alu32_imm(AluOp::Mov, R0, 2),
                "b4 00 00 00 02 00 00 00",
            ),
            (Insn::to_be(R1, 16), "dc 01 00 00 10 00 00 00"),
            (Insn::to_be(R1, 32), "dc 01 00 00 20 00 00 00"),
            (
                Insn::jmp_imm(Cond::Eq, R1, 0x800, 3),
                "15 01 03 00 00 08 00 00",
            ),
            (
                Insn::jmp_imm(Cond::Ne, R0, 0, -2),
                "55 00 fe ff 00 00 00 00",
            ),
            (
                Insn::jmp_reg(Cond::Gt, R4, R3, 7),
                "2d 34 07 00 00 00 00 00",
            ),
            (
                Insn::jmp32_imm(Cond::Eq, R0, 4, 1),
                "16 00 01 00 04 00 00 00",
            ),
            (Insn::ja(5), "05 00 05 00 00 00 00 00"),
            (Insn::call(Helper::MapLookupElem), "85 00 00 00 01 00 00 00"),
            (Insn::call(Helper::RedirectMap), "85 00 00 00 33 00 00 00"),
            (
                Insn::atomic_add(Size::DW, R0, 0, R1),
                "db 10 00 00 00 00 00 00",
            ),
            (
                Insn::atomic_add(Size::W, R0, 8, R1),
                "c3 10 08 00 00 00 00 00",
            ),
        ];
        for (insn, want) in cases {
            assert_eq!(hex(insn.encode()), *want, "{insn:?}");
            assert_eq!(Insn::decode(insn.encode()), *insn);
        }
    }

    #[test]
    fn ld_imm64_takes_two_slots() {
        let [a, b] = Insn::ld_map_fd(R1, 0xfd);
        assert_eq!(hex(a.encode()), "18 11 00 00 fd 00 00 00");
        assert_eq!(hex(b.encode()), "00 00 00 00 00 00 00 00");
        let [a, b] = Insn::ld_imm64(R3, 0x1122_3344_5566_7788);
        assert_eq!(hex(a.encode()), "18 03 00 00 88 77 66 55");
        assert_eq!(hex(b.encode()), "00 00 00 00 44 33 22 11");
    }

    #[test]
    fn labels_resolve_forward_and_backward() {
        let mut a = Asm::new();
        a.label("top") // slot 0
            .mov64_imm(R0, 0) // 0
            .jmp_imm(Cond::Eq, R0, 1, "out") // 1 -> 5: off 3
            .ld_map_fd(R1, 3) // 2, 3
            .ja("top") // 4 -> 0: off -5
            .label("out")
            .exit(); // 5
        let code = a.finish().unwrap();
        assert_eq!(code.len(), 6);
        assert_eq!(Insn::decode(code[1]).off, 3);
        assert_eq!(Insn::decode(code[4]).off, -5);
    }

    #[test]
    fn label_errors() {
        let mut a = Asm::new();
        a.ja("nowhere").exit();
        assert_eq!(
            a.finish(),
            Err(AsmError::UnknownLabel("nowhere".to_owned()))
        );

        let mut a = Asm::new();
        a.label("x").exit().label("x");
        assert_eq!(a.finish(), Err(AsmError::DuplicateLabel("x".to_owned())));

        let mut a = Asm::new();
        a.ja("far");
        for _ in 0..40_000 {
            a.mov64_imm(R0, 0);
        }
        a.label("far").exit();
        assert!(matches!(
            a.finish(),
            Err(AsmError::JumpOutOfRange { offset: 40_000, .. })
        ));
    }

    proptest! {
        #[test]
        fn encode_decode_roundtrip(code: u8, dst in 0u8..16, src in 0u8..16, off: i16, imm: i32) {
            let insn = Insn { code, dst, src, off, imm };
            prop_assert_eq!(Insn::decode(insn.encode()), insn);
            prop_assert_eq!(insn.encode().to_le_bytes(), insn.to_bytes());
        }

        #[test]
        fn forward_jump_offset_counts_slots(singles in 0usize..200, doubles in 0usize..100) {
            let mut a = Asm::new();
            a.ja("end");
            for _ in 0..singles {
                a.mov64_imm(R1, 1);
            }
            for _ in 0..doubles {
                a.ld_imm64(R1, 1);
            }
            a.label("end").exit();
            let code = a.finish().unwrap();
            prop_assert_eq!(Insn::decode(code[0]).off as usize, singles + 2 * doubles);
        }
    }
}
