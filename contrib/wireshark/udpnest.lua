-- udpnest.lua: Wireshark / tshark dissector for udpnest's Geneve options (docs/wire-format.md).
--
--   FOLD (type 0x81)          one folded nested tunnel level: metadata + its Eth/IP/UDP/tunnel headers
--   ECHO_REQUEST (0x82)       capability probe: nonce, timestamp, capabilities
--   ECHO_REPLY (0x83)         the answer
--   Linux GRO hint (class 0x0100, type 0x01), decoded as well
--
-- Wireshark 4.0's Geneve dissector has no dissector table for option classes (it decodes a few known
-- classes itself and shows the rest as "Unknown Option Data"), so this script wraps it: it takes over the
-- Geneve UDP port(s), lets the built-in Geneve dissector decode the header and the payload as usual, and
-- adds a "udpnest" tree that decodes the options of udpnest's class (preference "opt_class", default
-- 0xFF4E).  For a packet with FOLD options it rebuilds the frame as it was before folding (the carried
-- headers + the Geneve payload, lengths and checksums restored like udpnest's unfold()) and hands it to
-- the Ethernet dissector, so the folded headers show as the Ethernet / IP / UDP / VXLAN they are (in a
-- separate "Unfolded frame" data tab).
--
-- Malformed options get expert info of group "Malformed" (severity error), with the check that failed.
--
-- Install:  mkdir -p ~/.local/lib/wireshark/plugins && cp udpnest.lua ~/.local/lib/wireshark/plugins/
--   or for one run:  tshark -X lua_script:contrib/wireshark/udpnest.lua -r capture.pcap -V
-- Fields:   udpnest.fold.*, udpnest.echo.*, udpnest.gro_hint.*  (tshark -G fields | grep udpnest)

local udpnest = Proto("udpnest", "udpnest Geneve options")

local ENC_NAMES = { [1] = "VXLAN", [2] = "VXLAN-GPE", [3] = "Geneve" }
local TYPE_NAMES = { [0x81] = "FOLD", [0x82] = "ECHO_REQUEST", [0x83] = "ECHO_REPLY" }

local f = {
    opt = ProtoField.none("udpnest.option", "udpnest option"),
    g_version = ProtoField.uint8("udpnest.geneve.version", "Geneve version", base.DEC, nil, 0xc0),
    g_optlen = ProtoField.uint8("udpnest.geneve.opt_len", "Options length (4-byte words)", base.DEC, nil, 0x3f),
    g_oam = ProtoField.bool("udpnest.geneve.oam", "O: OAM", 8, nil, 0x80),
    g_crit = ProtoField.bool("udpnest.geneve.critical", "C: critical options present", 8, nil, 0x40),
    g_rsvd = ProtoField.uint8("udpnest.geneve.reserved_bits", "Reserved", base.HEX, nil, 0x3f),
    g_proto = ProtoField.uint16("udpnest.geneve.proto_type", "Protocol type", base.HEX),
    g_vni = ProtoField.uint24("udpnest.geneve.vni", "VNI", base.DEC),
    g_rsvd2 = ProtoField.uint8("udpnest.geneve.reserved", "Reserved", base.HEX),
    payload = ProtoField.bytes("udpnest.payload", "Payload (innermost frame)"),
    opt_class = ProtoField.uint16("udpnest.option.class", "Class", base.HEX),
    opt_type = ProtoField.uint8("udpnest.option.type", "Type", base.HEX, TYPE_NAMES),
    opt_len = ProtoField.uint8("udpnest.option.length", "Length (4-byte words)", base.DEC, nil, 0x1f),

    fold_version = ProtoField.uint8("udpnest.fold.version", "Version", base.DEC, nil, 0xc0),
    fold_rsvd1 = ProtoField.uint8("udpnest.fold.reserved_bits", "Reserved", base.HEX, nil, 0x38),
    fold_enc = ProtoField.uint8("udpnest.fold.enc", "Nested tunnel", base.DEC, ENC_NAMES, 0x07),
    fold_flags = ProtoField.uint8("udpnest.fold.flags", "Flags", base.HEX),
    fold_v = ProtoField.bool("udpnest.fold.flags.v6", "V: nested L3 is IPv6", 8, nil, 0x80),
    fold_u = ProtoField.bool("udpnest.fold.flags.udp_csum", "U: nested UDP checksum to regenerate", 8, nil, 0x40),
    fold_l = ProtoField.bool("udpnest.fold.flags.len_zeroed", "L: lengths zeroed", 8, nil, 0x20),
    fold_c = ProtoField.bool("udpnest.fold.flags.csum_zeroed", "C: checksums zeroed", 8, nil, 0x10),
    fold_r = ProtoField.bool("udpnest.fold.flags.rco", "R: remote checksum offload", 8, nil, 0x08),
    fold_frsvd = ProtoField.uint8("udpnest.fold.flags.reserved", "Reserved flags", base.HEX, nil, 0x07),
    fold_l2 = ProtoField.uint8("udpnest.fold.l2_len", "L2 length", base.DEC),
    fold_l3 = ProtoField.uint8("udpnest.fold.l3_len", "L3 length", base.DEC),
    fold_tun = ProtoField.uint8("udpnest.fold.tun_len", "Tunnel header length", base.DEC),
    fold_rsvd = ProtoField.uint8("udpnest.fold.reserved", "Reserved", base.HEX),
    fold_level = ProtoField.uint8("udpnest.fold.level", "Level (0 = outermost)", base.DEC),
    fold_hdrs = ProtoField.bytes("udpnest.fold.headers", "Carried headers"),
    fold_pad = ProtoField.bytes("udpnest.fold.padding", "Padding"),
    folded_levels = ProtoField.uint8("udpnest.fold.levels", "Folded levels", base.DEC),

    echo_nonce = ProtoField.uint64("udpnest.echo.nonce", "Nonce", base.HEX),
    echo_ts = ProtoField.uint64("udpnest.echo.timestamp", "Timestamp (sender's ns)", base.DEC),
    echo_capver = ProtoField.uint8("udpnest.echo.cap_version", "Capability version", base.DEC),
    echo_levels = ProtoField.uint8("udpnest.echo.max_levels", "Max levels", base.DEC),
    echo_words = ProtoField.uint8("udpnest.echo.max_opt_words", "Max option words", base.DEC),
    echo_caps = ProtoField.uint8("udpnest.echo.cap_flags", "Capability flags", base.HEX),
    echo_cap_fold = ProtoField.bool("udpnest.echo.cap_flags.fold", "FOLD", 8, nil, 0x01),
    echo_cap_hint = ProtoField.bool("udpnest.echo.cap_flags.hint", "HINT", 8, nil, 0x02),
    echo_cap_rco = ProtoField.bool("udpnest.echo.cap_flags.rco", "RCO", 8, nil, 0x04),
    echo_reply = ProtoField.bool("udpnest.echo.reply", "Reply"),

    hint_id = ProtoField.uint8("udpnest.gro_hint.inner_proto_id", "Inner proto id", base.DEC,
        { [0] = "Ethernet", [1] = "IPv6", [2] = "IPv4" }, 0x03),
    hint_v6 = ProtoField.bool("udpnest.gro_hint.nested_is_v6", "Nested IPv6", 8, nil, 0x04),
    hint_nh = ProtoField.uint8("udpnest.gro_hint.nested_nh_offset", "Nested network header offset", base.DEC),
    hint_tp = ProtoField.uint8("udpnest.gro_hint.nested_tp_offset", "Nested transport header offset", base.DEC),
    hint_hlen = ProtoField.uint8("udpnest.gro_hint.nested_hdr_len", "Nested headers length", base.DEC),
}
local field_list = {}
for _, v in pairs(f) do field_list[#field_list + 1] = v end
udpnest.fields = field_list

local ef = {
    fold = ProtoExpert.new("udpnest.fold.malformed", "Malformed FOLD option", expert.group.MALFORMED,
        expert.severity.ERROR),
    echo = ProtoExpert.new("udpnest.echo.malformed", "Malformed echo option", expert.group.MALFORMED,
        expert.severity.ERROR),
    hint = ProtoExpert.new("udpnest.gro_hint.malformed", "Malformed GRO hint", expert.group.MALFORMED,
        expert.severity.ERROR),
    geneve = ProtoExpert.new("udpnest.geneve.malformed", "Malformed Geneve options", expert.group.MALFORMED,
        expert.severity.ERROR),
    unfold = ProtoExpert.new("udpnest.unfold", "Folded frame restored", expert.group.SEQUENCE,
        expert.severity.CHAT),
}
udpnest.experts = { ef.fold, ef.echo, ef.hint, ef.geneve, ef.unfold }

udpnest.prefs.opt_class = Pref.uint("Option class", 0xFF4E, "Geneve option class of udpnest's options")
udpnest.prefs.ports = Pref.range("Geneve UDP ports", "6081", "UDP ports to decode as Geneve", 65535)
udpnest.prefs.unfold = Pref.bool("Dissect unfolded frame", true,
    "Rebuild a folded frame and hand it to the Ethernet dissector")

local geneve = DissectorTable.get("udp.port"):get_dissector(6081)
local eth = Dissector.get("eth_withoutfcs")
local ip_dissector = { [4] = Dissector.get("ip"), [6] = Dissector.get("ipv6") }

-- ones' complement sum of a ByteArray slice (big-endian 16-bit words)
local function ones_sum(ba, off, len, acc)
    acc = acc or 0
    local i = off
    local stop = off + len - 1
    while i < stop do
        acc = acc + ba:get_index(i) * 256 + ba:get_index(i + 1)
        i = i + 2
    end
    if i == stop then acc = acc + ba:get_index(i) * 256 end
    while acc > 0xffff do acc = bit32.band(acc, 0xffff) + bit32.rshift(acc, 16) end
    return acc
end

local function put16(ba, off, v)
    ba:set_index(off, bit32.rshift(v, 8))
    ba:set_index(off + 1, bit32.band(v, 0xff))
end

-- Validate one FOLD option's data (tvb range ``r``); returns a table describing it, or nil + reason.
local function check_fold(r, first, prev_is_eth)
    local n = r:len()
    if n < 8 then return nil, "option data shorter than 8 bytes" end
    local b0, b1 = r:range(0, 1):uint(), r:range(1, 1):uint()
    local d = {
        version = bit32.rshift(b0, 6), enc = bit32.band(b0, 7), flags = b1,
        l2 = r:range(2, 1):uint(), l3 = r:range(3, 1):uint(), tun = r:range(4, 1):uint(),
        rsvd = r:range(5, 1):uint(),
    }
    d.v6 = bit32.band(b1, 0x80) ~= 0
    if d.version ~= 0 then return d, "version " .. d.version .. " (only 0 exists)" end
    if bit32.band(b0, 0x38) ~= 0 or bit32.band(b1, 0x07) ~= 0 or d.rsvd ~= 0 then
        return d, "reserved bits set"
    end
    if not ENC_NAMES[d.enc] then return d, "unknown nested tunnel type " .. d.enc end
    if bit32.band(b1, 0x30) ~= 0x30 then return d, "version 0 requires both L and C flags" end
    if d.l2 ~= 0 and d.l2 ~= 14 and d.l2 ~= 18 then return d, "L2 length " .. d.l2 .. " (0, 14 or 18)" end
    if (d.l2 ~= 0) ~= prev_is_eth then
        return d, (prev_is_eth and "L2 header missing after an Ethernet level" or
            "L2 header present after a level that carries IP")
    end
    local carried = d.l2 + d.l3 + 8 + d.tun
    if 6 + carried > n or n - 6 - carried > 3 then
        return d, string.format("lengths %d+%d+8+%d do not fill the option (%d bytes of data)", d.l2, d.l3, d.tun, n)
    end
    for i = 6 + carried, n - 1 do
        if r:range(i, 1):uint() ~= 0 then return d, "non-zero padding" end
    end
    d.carried = carried
    local l3 = 6 + d.l2
    if d.l2 ~= 0 then
        local et = r:range(6 + d.l2 - 2, 2):uint()
        if et ~= (d.v6 and 0x86dd or 0x0800) then
            return d, string.format("carried Ethernet type 0x%04x does not match the V flag", et)
        end
    end
    if d.v6 then
        if d.l3 < 40 or bit32.rshift(r:range(l3, 1):uint(), 4) ~= 6 then return d, "carried IPv6 header" end
        if r:range(l3 + 4, 2):uint() ~= 0 then return d, "IPv6 payload length not zeroed" end
    else
        local vihl = r:range(l3, 1):uint()
        if bit32.rshift(vihl, 4) ~= 4 or bit32.band(vihl, 15) * 4 ~= d.l3 then
            return d, "carried IPv4 header does not match L3 length"
        end
        if r:range(l3 + 9, 1):uint() ~= 17 then return d, "carried IPv4 header is not UDP" end
        if bit32.band(r:range(l3 + 6, 2):uint(), 0x3fff) ~= 0 then return d, "carried IPv4 header is a fragment" end
        if r:range(l3 + 2, 2):uint() ~= 0 or r:range(l3 + 10, 2):uint() ~= 0 then
            return d, "IPv4 total length / checksum not zeroed"
        end
    end
    local udp = l3 + d.l3
    if r:range(udp + 4, 4):uint() ~= 0 then return d, "UDP length / checksum not zeroed" end
    local tun = udp + 8
    if d.enc == 1 then
        if d.tun ~= 8 or bit32.band(r:range(tun, 1):uint(), 0x08) == 0 then return d, "VXLAN header (I flag)" end
        d.next_eth = true
    elseif d.enc == 2 then
        if d.tun ~= 8 or bit32.band(r:range(tun, 1):uint(), 0x04) == 0 then return d, "VXLAN-GPE header (P flag)" end
        d.next_eth = r:range(tun + 3, 1):uint() == 3
    else
        if d.tun < 8 or bit32.rshift(r:range(tun, 1):uint(), 6) ~= 0 or
            8 + bit32.band(r:range(tun, 1):uint(), 0x3f) * 4 ~= d.tun then
            return d, "nested Geneve header length"
        end
        d.next_eth = r:range(tun + 2, 2):uint() == 0x6558
    end
    return d, nil
end

local function add_fold(tree, r, level, pinfo, prev_is_eth)
    local t = tree:add(f.opt, r):set_text("FOLD level " .. level)
    t:add(f.opt_class, r:range(0, 2))
    t:add(f.opt_type, r:range(2, 1))
    t:add(f.opt_len, r:range(3, 1))
    local data = r:range(4)
    t:add(f.fold_level, level):set_generated()
    local d, err = check_fold(data, level == 0, prev_is_eth)
    if data:len() >= 6 then
        t:add(f.fold_version, data:range(0, 1))
        t:add(f.fold_rsvd1, data:range(0, 1))
        t:add(f.fold_enc, data:range(0, 1))
        local ft = t:add(f.fold_flags, data:range(1, 1))
        for _, k in ipairs({ "fold_v", "fold_u", "fold_l", "fold_c", "fold_r", "fold_frsvd" }) do
            ft:add(f[k], data:range(1, 1))
        end
        t:add(f.fold_l2, data:range(2, 1))
        t:add(f.fold_l3, data:range(3, 1))
        t:add(f.fold_tun, data:range(4, 1))
        t:add(f.fold_rsvd, data:range(5, 1))
    end
    if d and d.carried then
        t:add(f.fold_hdrs, data:range(6, d.carried))
        if data:len() > 6 + d.carried then t:add(f.fold_pad, data:range(6 + d.carried)) end
        t:append_text(string.format(": %s, %s", ENC_NAMES[d.enc] or "?", d.v6 and "IPv6" or "IPv4"))
    end
    if err then
        t:add_proto_expert_info(ef.fold, "Malformed FOLD option: " .. err)
        return nil
    end
    return d
end

local function add_echo(tree, r, reply)
    local t = tree:add(f.opt, r):set_text(reply and "ECHO_REPLY" or "ECHO_REQUEST")
    t:add(f.opt_class, r:range(0, 2))
    t:add(f.opt_type, r:range(2, 1))
    t:add(f.opt_len, r:range(3, 1))
    t:add(f.echo_reply, reply):set_generated()
    local data = r:range(4)
    if data:len() ~= 20 then
        t:add_proto_expert_info(ef.echo, string.format("Malformed echo option: %d bytes of data, expected 20",
            data:len()))
        return
    end
    t:add(f.echo_nonce, data:range(0, 8))
    t:add(f.echo_ts, data:range(8, 8))
    t:add(f.echo_capver, data:range(16, 1))
    t:add(f.echo_levels, data:range(17, 1))
    t:add(f.echo_words, data:range(18, 1))
    local ct = t:add(f.echo_caps, data:range(19, 1))
    ct:add(f.echo_cap_fold, data:range(19, 1))
    ct:add(f.echo_cap_hint, data:range(19, 1))
    ct:add(f.echo_cap_rco, data:range(19, 1))
    t:append_text(string.format(": nonce 0x%s", data:range(0, 8):bytes():tohex()))
    if data:range(16, 1):uint() ~= 0 then
        t:add_proto_expert_info(ef.echo, "Malformed echo option: capability version " .. data:range(16, 1):uint())
    elseif data:range(18, 1):uint() > 63 then
        t:add_proto_expert_info(ef.echo, "Malformed echo option: max option words > 63")
    end
end

local function add_hint(tree, r)
    local t = tree:add(f.opt, r):set_text("Linux GRO hint")
    t:add(f.opt_class, r:range(0, 2))
    t:add(f.opt_type, r:range(2, 1))
    t:add(f.opt_len, r:range(3, 1))
    local data = r:range(4)
    if data:len() ~= 4 then
        t:add_proto_expert_info(ef.hint, "Malformed GRO hint: " .. data:len() .. " bytes of data, expected 4")
        return
    end
    t:add(f.hint_id, data:range(0, 1))
    t:add(f.hint_v6, data:range(0, 1))
    t:add(f.hint_nh, data:range(1, 1))
    t:add(f.hint_tp, data:range(2, 1))
    t:add(f.hint_hlen, data:range(3, 1))
    local id, v6 = bit32.band(data:range(0, 1):uint(), 3), bit32.band(data:range(0, 1):uint(), 4) ~= 0
    local nh, tp, hlen = data:range(1, 1):uint(), data:range(2, 1):uint(), data:range(3, 1):uint()
    if id > 2 or tp + 8 > hlen or nh + (v6 and 40 or 20) > tp then
        t:add_proto_expert_info(ef.hint, "Malformed GRO hint: offsets inconsistent")
    end
end

-- Rebuild the frame before folding: carried headers (outermost first) + payload; restore lengths and
-- checksums innermost level first, like udpnest.fold.unfold().
local function unfold(tvb, folds, payload_off)
    local parts = {}
    for i, d in ipairs(folds) do parts[i] = d.range:range(6, d.carried):bytes() end
    local ba = ByteArray.new()
    local starts = {}
    for i, p in ipairs(parts) do
        starts[i] = ba:len()
        ba:append(p)
    end
    local payload_len = tvb:len() - payload_off
    if payload_len > 0 then ba:append(tvb:range(payload_off):bytes()) end
    local total = ba:len()
    for i = #folds, 1, -1 do
        local d = folds[i]
        local l3 = starts[i] + d.l2
        local udp = l3 + d.l3
        local after_udp = total - udp
        if after_udp > 0xffff then return nil end
        if d.v6 then
            put16(ba, l3 + 4, total - l3 - 40)
        else
            put16(ba, l3 + 2, total - l3)
            put16(ba, l3 + 10, bit32.bxor(ones_sum(ba, l3, d.l3), 0xffff))
        end
        put16(ba, udp + 4, after_udp)
        if bit32.band(d.flags, 0x40) ~= 0 then -- U: the UDP checksum was present: regenerate it
            local acc
            if d.v6 then
                acc = ones_sum(ba, l3 + 8, 32)
            else
                acc = ones_sum(ba, l3 + 12, 8)
            end
            acc = acc + 17 + bit32.rshift(after_udp, 16) + bit32.band(after_udp, 0xffff)
            local c = bit32.bxor(ones_sum(ba, udp, after_udp, acc), 0xffff)
            if c == 0 then c = 0xffff end
            put16(ba, udp + 6, c)
        end
    end
    return ba
end

-- Decode udpnest's options into ``t``; returns the valid FOLD levels, whether all FOLD options were valid,
-- and whether the last folded level carries Ethernet.
local function add_options(tvb, t, stop)
    local cls = udpnest.prefs.opt_class
    local folds, fold_ok, prev_is_eth = {}, true, true -- the frame udpnest reads from its TAP is Ethernet
    local off = 8
    while off + 4 <= stop do
        local oc, ot = tvb:range(off, 2):uint(), tvb:range(off + 2, 1):uint()
        local olen = 4 + bit32.band(tvb:range(off + 3, 1):uint(), 0x1f) * 4
        local mine = (oc == cls and TYPE_NAMES[ot]) or (oc == 0x0100 and ot == 0x01)
        if off + olen > stop then
            t:add_tvb_expert_info(ef.geneve, tvb:range(off, stop - off),
                "Malformed Geneve options: an option crosses Opt Len")
            return folds, false, prev_is_eth
        end
        local r = tvb:range(off, olen)
        if oc == cls and ot == 0x81 then
            local d = add_fold(t, r, #folds, nil, prev_is_eth)
            if d then
                d.range = r:range(4)
                folds[#folds + 1] = d
                prev_is_eth = d.next_eth
            else
                fold_ok = false
            end
        elseif oc == cls and (ot == 0x82 or ot == 0x83) then
            add_echo(t, r, ot == 0x83)
        elseif oc == 0x0100 and ot == 0x01 then
            add_hint(t, r)
        elseif not mine then
            t:add(f.opt, r):set_text(string.format("Other option: class 0x%04x type 0x%02x (%d bytes)", oc, ot, olen))
        end
        off = off + olen
    end
    if off ~= stop then
        t:add_tvb_expert_info(ef.geneve, tvb:range(off, stop - off), "Malformed Geneve options: trailing bytes")
        fold_ok = false
    end
    return folds, fold_ok, prev_is_eth
end

-- Is there an option of udpnest's class (FOLD or echo) in the header?  (The built-in Geneve dissector
-- handles everything else, and shows the GRO hint as an unknown option: we add a udpnest tree for it.)
local function scan(tvb, stop)
    local cls = udpnest.prefs.opt_class
    local own, hint = false, false
    local off = 8
    while off + 4 <= stop do
        local oc, ot = tvb:range(off, 2):uint(), tvb:range(off + 2, 1):uint()
        if oc == cls and TYPE_NAMES[ot] then own = true end
        if oc == 0x0100 and ot == 0x01 then hint = true end
        off = off + 4 + bit32.band(tvb:range(off + 3, 1):uint(), 0x1f) * 4
    end
    return own, hint
end

function udpnest.dissector(tvb, pinfo, tree)
    if tvb:len() < 8 or bit32.rshift(tvb:range(0, 1):uint(), 6) ~= 0 then
        return geneve:call(tvb, pinfo, tree)
    end
    local optlen = bit32.band(tvb:range(0, 1):uint(), 0x3f) * 4
    local stop = math.min(8 + optlen, tvb:len())
    local own, hint = scan(tvb, stop)
    if not own then -- plain Geneve (and hint mode): the built-in dissector, plus our view of the hint
        local consumed = geneve:call(tvb, pinfo, tree)
        if hint then add_options(tvb, tree:add(udpnest, tvb:range(0, stop)), stop) end
        return consumed
    end
    -- FOLD or echo: udpnest decodes the Geneve header itself.  The built-in dissector would show a FOLD
    -- packet's payload (the innermost frame) once more next to the unfolded frame, and raises an exception
    -- on an echo packet's empty Ethernet payload.
    pinfo.cols.protocol = "udpnest"
    local t = tree:add(udpnest, tvb:range(0, stop))
    local h = tvb:range(0, 8)
    t:add(f.g_version, h:range(0, 1))
    t:add(f.g_optlen, h:range(0, 1))
    t:add(f.g_oam, h:range(1, 1))
    t:add(f.g_crit, h:range(1, 1))
    t:add(f.g_rsvd, h:range(1, 1))
    t:add(f.g_proto, h:range(2, 2))
    t:add(f.g_vni, h:range(4, 3))
    t:add(f.g_rsvd2, h:range(7, 1))
    local folds, fold_ok, last_is_eth = add_options(tvb, t, stop)
    local payload_off = 8 + optlen
    local info = {}
    local vni = h:range(4, 3):uint()
    if #folds > 0 then
        t:add(f.folded_levels, #folds):set_generated()
        t:append_text(string.format(", VNI %d, %d folded level%s", vni, #folds, #folds > 1 and "s" or ""))
        info[#info + 1] = string.format("FOLD x%d VNI %d", #folds, vni)
    end
    local cls = udpnest.prefs.opt_class
    local off = 8
    while off + 4 <= stop do -- Info column: the echo kind and nonce
        local oc, ot = tvb:range(off, 2):uint(), tvb:range(off + 2, 1):uint()
        local olen = 4 + bit32.band(tvb:range(off + 3, 1):uint(), 0x1f) * 4
        if oc == cls and (ot == 0x82 or ot == 0x83) and olen == 24 and off + olen <= stop then
            info[#info + 1] = string.format("Echo %s nonce 0x%s", ot == 0x82 and "request" or "reply",
                tvb:range(off + 4, 8):bytes():tohex())
        end
        off = off + olen
    end
    pinfo.cols.info = "udpnest " .. table.concat(info, ", ")
    if payload_off >= tvb:len() then return tvb:len() end
    local proto = tvb:range(2, 2):uint()
    if #folds > 0 and fold_ok and udpnest.prefs.unfold then
        if last_is_eth and proto ~= 0x6558 then
            t:add_proto_expert_info(ef.fold, string.format(
                "Malformed FOLD option: the last level carries Ethernet, Geneve protocol is 0x%04x", proto))
        else
            local ba = unfold(tvb, folds, payload_off)
            if ba then
                t:add(f.payload, tvb:range(payload_off)):set_hidden()
                local ut = t:add(udpnest, tvb:range(payload_off), "Unfolded frame (as sent before folding)")
                ut:add_proto_expert_info(ef.unfold, string.format("%d folded level(s) restored", #folds))
                local utvb = ba:tvb("Unfolded frame")
                if folds[1].l2 ~= 0 then
                    eth:call(utvb, pinfo, tree)
                else
                    ip_dissector[folds[1].v6 and 6 or 4]:call(utvb, pinfo, tree)
                end
                return tvb:len()
            end
            t:add_proto_expert_info(ef.fold, "Malformed FOLD option: restored lengths exceed 65535")
        end
    end
    -- not unfolded: the payload as what the Geneve protocol type says
    local ptvb = tvb:range(payload_off):tvb()
    if not DissectorTable.get("ethertype"):try(proto, ptvb, pinfo, tree) then
        t:add(f.payload, tvb:range(payload_off))
    end
    return tvb:len()
end

local function register_ports()
    local udp = DissectorTable.get("udp.port")
    udp:add(udpnest.prefs.ports, udpnest)
end

function udpnest.prefs_changed()
    register_ports()
end

register_ports()
