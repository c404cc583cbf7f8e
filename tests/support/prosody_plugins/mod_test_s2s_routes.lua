-- Test-only Prosody module (tests/support/peers.py): outgoing s2s to the domains listed in the option
-- test_s2s_routes goes to a fixed address and port, without DNS.
--
--   test_s2s_routes = { ["b.test"] = { host = "127.0.0.1"; port = 25269; direct_tls = false } }
--
-- mod_s2s asks net.resolvers.service for "_xmpp-server._tcp.<domain>" (and "_xmpps-server._tcp.<domain>"
-- when it has a TLS context); for a routed domain this module answers with a net.resolvers.manual resolver
-- holding the one target (STARTTLS routes answer the xmpp-server lookup, direct TLS routes the xmpps-server
-- one; the other lookup gets no target). Other domains resolve as usual. Dialback's connections back to
-- the authoritative server use the same path (route/remote), so they are routed too.

module:set_global();

local manual = require "net.resolvers.manual";
local service = require "net.resolvers.service";

local routes = module:get_option("test_s2s_routes", {});

if not service._test_s2s_routes_original then
	service._test_s2s_routes_original = service.new;
end
local original_new = service._test_s2s_routes_original;

service.new = function (hostname, service_name, conn_type, extra)
	local route = routes[hostname];
	if route == nil then
		return original_new(hostname, service_name, conn_type, extra);
	end
	conn_type = conn_type or "tcp";
	local family = route.host:find(":", 1, true) and "6" or "4";
	local targets = {};
	if (service_name == "xmpps-server") == (route.direct_tls == true) then
		targets[1] = { conn_type .. family, route.host, route.port, extra };
	end
	module:log("debug", "test route for %s (%s): %d target(s)", hostname, service_name, #targets);
	return manual.new(targets, conn_type, extra);
end

function module.unload()
	service.new = original_new;
end
