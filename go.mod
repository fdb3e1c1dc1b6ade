module github.com/gannetmq/gannet

go 1.26
