package cli

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/flotillamesh/flotilla/server"
)

// hubClient connects to a running hub.
func (g *globals) hubClient(url string) (server.Engine, func(), error) {
	return nil, nil, errors.New("--hub: " + url + ": this build has no hub client yet")
}

func extraCommands(g *globals) []*cobra.Command {
	return []*cobra.Command{newCSRAgentCommand(g)}
}
