/* Loaded as a 64 KiB BIOS at 0xF0000. Real mode -> protected mode -> long mode, then writes
   0x21 to isa-debug-exit (QEMU exits with (0x21<<1)|1 = 67). Port 0xf4 gets 0x11 after protected mode
   would be too early, so progress goes to debugcon 0x402: 'P' in protected mode, 'L' in long mode. */
        .code16
        .org 0
start16:
        cli
        lgdtl %cs:(gdt_desc)
        movl %cr0, %eax
        orl $1, %eax
        movl %eax, %cr0
        ljmpl $0x08, $(0xF0000 + pm32)
        .code32
pm32:
        movw $0x10, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movw $0x402, %dx
        movb $'P', %al
        outb %al, %dx
        /* identity map the first 1 GiB with one 1 GiB page... use 2 MiB pages: PML4 at 0x1000, PDPT 0x2000, PD 0x3000 */
        movl $0x1000, %edi
        xorl %eax, %eax
        movl $(3*1024), %ecx
        rep stosl
        movl $0x2003, 0x1000
        movl $0x3003, 0x2000
        movl $0x83, 0x3000          /* 2 MiB page at 0, present|rw|ps */
        movl $0x200083, 0x3008
        movl %cr4, %eax
        orl $0x20, %eax             /* PAE */
        movl %eax, %cr4
        movl $0x1000, %eax
        movl %eax, %cr3
        movl $0xC0000080, %ecx      /* EFER */
        rdmsr
        orl $0x100, %eax            /* LME */
        wrmsr
        movl %cr0, %eax
        orl $0x80000000, %eax       /* PG */
        movl %eax, %cr0
        ljmpl $0x18, $(0xF0000 + lm64)
        .code64
lm64:
        movw $0x402, %dx
        movb $'L', %al
        outb %al, %dx
        movb $0x21, %al
        outb %al, $0xf4
1:      hlt
        jmp 1b
        .balign 8
gdt:
        .quad 0
        .quad 0x00CF9A000000FFFF    /* 0x08 code32 */
        .quad 0x00CF92000000FFFF    /* 0x10 data */
        .quad 0x00AF9A000000FFFF    /* 0x18 code64 */
gdt_end:
gdt_desc:
        .word gdt_end - gdt - 1
        .long 0xF0000 + gdt
        .org 0xFFF0
        .code16
reset:
        ljmp $0xF000, $start16
        .org 0x10000, 0xf4
